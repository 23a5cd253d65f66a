"""``perceptio generate RUN_DIR --prompt TEXT``: continue a text with a causal byte model
(Perceiver AR), streaming the bytes as they are produced."""

from __future__ import annotations

import codecs
import itertools
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a causal byte model (Perceiver AR), streaming bytes")
    p.add_argument("run_dir", help="a training run directory or a model directory of a Perceiver AR")
    p.add_argument("--prompt", required=True, help="the text to continue (UTF-8)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--greedy", action="store_true", help="always take the most likely byte")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", default=None,
                   help="stop at any of these bytes (Python escapes allowed, e.g. '\\n'); the end-of-sequence id always stops")
    p.add_argument("--cache", choices=["exact", "reference", "none"], default="exact",
                   help="exact: key/value cache equal to a full recompute; reference: the official sampler's "
                        "rolling caches; none: recompute every step")
    p.add_argument("--no-truncate", action="store_true",
                   help="refuse a prompt longer than the model's context instead of keeping its end")
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..generation import check_causal, iter_generate
    from ..tasks.loading import load_model
    from ..tokenizer import CausalByteTokenizer

    tok = CausalByteTokenizer()
    model = load_model(args.run_dir, args.device)
    try:
        check_causal(model)
    except TypeError as e:
        raise ValueError(f"{args.run_dir}: {e} (train one with `perceptio train bytes_clm`)") from None
    prompt = tok.encode(args.prompt)
    if not prompt:
        raise ValueError("--prompt is empty; give at least one character to continue")
    stop = {tok.eos_id}
    if args.stop:
        stop |= {b + tok.offset for b in codecs.decode(args.stop, "unicode_escape").encode("utf-8")}
    out = sys.stdout.buffer
    steps = iter_generate(model, [prompt], args.max_new_tokens, greedy=args.greedy, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop_tokens=sorted(stop),
                         cache=args.cache, truncate="error" if args.no_truncate else "left")
    first = next(steps, None)  # bad settings raise here, before anything is printed
    out.write(args.prompt.encode("utf-8"))
    if first is not None:
        for tokens in itertools.chain([first], steps):
            if int(tokens[0]) >= 0:  # -1: stopped
                out.write(tok.decode_bytes([int(tokens[0])]))
                out.flush()
    out.write(b"\n")
    out.flush()
    return 0
