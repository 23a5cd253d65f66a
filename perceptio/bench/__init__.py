"""The benchmarks of docs/performance.md (``perceptio bench``): perceptio against
``transformers``, ``perceiver-pytorch`` and a plain Transformer. Not tests: they time and
measure, and need the ``[bench]`` extra for their contenders."""
