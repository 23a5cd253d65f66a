#!/usr/bin/env bash
# Perceiver AR vs a decoder-only Transformer (perceptio/bench/causal.py): one process per
# measurement, one JSON line each, appended to benchmarks/results/perceiver_ar/*.jsonl.
# One torch thread each; budgets and rates in CPU time, the steady measure on a shared machine.
# Usage: bash benchmarks/perceiver_ar.sh [train|steps|step|decode|memory]...  (default: all)
set -euo pipefail
OUT=benchmarks/results/perceiver_ar
mkdir -p "$OUT"
run() { python -m perceptio.bench.causal "$@" | tee -a "$OUT/$1.jsonl"; }
for part in "${@:-train steps step decode memory}"; do
  for what in $part; do
    case $what in
      train)  # the same CPU time (120 s), the same bytes, short and long context, 64 latents: 4 processes at once
        for ctx in 256 2048; do for m in ar transformer; do
          run train --model $m --context $ctx --latents 64 --seconds 120 --batch-size 8 & done; done; wait ;;
      steps)  # the paper's claim at a fixed number of steps: 256 vs 2048 bytes of context, 64 latents, 522 steps
        run train --model ar --context 256 --latents 64 --seconds 1000 --steps 522 --batch-size 8 ;;
      step)   # training step time and memory vs context at 256 latents, batch 1
        for ctx in 1024 2048 4096 8192 16384 32768 65536; do run step --model ar --context $ctx --latents 256; done
        for ctx in 1024 2048 4096 8192; do run step --model transformer --context $ctx --latents 256; done ;;
      decode) # tokens/s at a 4k context, 256 latents (300 tokens: one reset of the reference cache)
        for cache in none exact reference; do run decode --context 4096 --latents 256 --new-tokens 300 --cache $cache; done ;;
      memory) # 1,000 tokens after a 32k prompt (64 latents)
        run decode --context 33768 --latents 64 --new-tokens 1000 --cache exact ;;
    esac
  done
done
