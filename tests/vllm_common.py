"""What the vLLM lane's tests share (tests/test_vllm*.py): the word-level tokenizer of the
tiny checkpoints, vLLM's greedy tokens with their log-probs, and stock vLLM's answer to a
recorded folder. Imports vLLM only inside the functions that run it."""
import os
import subprocess
import sys

import transformers

NEW_TOKENS = 64


def word_tokenizer(specials, words, named=None):
    """(tokenizer, vocab): `specials` first (the first is end of text and padding), then
    the words "w0" ... "w{words - 1}", split on whitespace. `named`: attribute -> one of
    `specials` (e.g. Gemma 3's {"boi_token": "<start_of_image>"}), which processors read."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(list(specials) + [f"w{i}" for i in range(words)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=specials[0]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    unnamed = [t for t in specials[1:] if t not in (named or {}).values()]
    extra = {"additional_special_tokens": unnamed} if unnamed else {}
    if named:
        extra["extra_special_tokens"] = dict(named)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=specials[0], pad_token=specials[0], **extra)
    return tokenizer, vocab


def served_greedy(llm, prompts, vocab_size, suppress, cached=None, new_tokens=NEW_TOKENS):
    """[(prompt ids, tokens, log-probs)] of vLLM's greedy run over `prompts`, never choosing
    a token of `suppress`; `cached`: a list given the number of prompt tokens vLLM found in
    its prefix cache for each prompt."""
    import vllm

    allowed = [i for i in range(vocab_size) if i not in suppress]
    params = vllm.SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True, logprobs=1,
                                 allowed_token_ids=allowed)
    results = []
    for out in llm.generate(prompts, params, use_tqdm=False):
        completion = out.outputs[0]
        logprobs = [step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)]
        results.append((list(out.prompt_token_ids), list(completion.token_ids), logprobs))
        if cached is not None:
            cached.append(out.num_cached_tokens or 0)
    return results


_STOCK_SCRIPT = """
import sys
from vllm import LLM
try:
    LLM(sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=int(sys.argv[2]))
except Exception as exc:
    print("REFUSED:", type(exc).__name__, exc)
    sys.exit(3)
print("SERVED")
"""


def stock_vllm(folder, max_model_len):
    """(exit code, output) of stock vLLM building `folder` in a fresh process: without the
    plugin (VLLM_PLUGINS names only vLLM's own); exit code 3 when it refuses."""
    env = dict(os.environ, VLLM_PLUGINS="lora_filesystem_resolver", HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-c", _STOCK_SCRIPT, folder, str(max_model_len)], env=env,
                         capture_output=True, text=True, timeout=600)
    return run.returncode, run.stdout + run.stderr
