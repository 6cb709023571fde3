"""What the vLLM lane's tests share (tests/test_vllm*.py): the word-level tokenizer of the
tiny checkpoints, vLLM's greedy tokens with their log-probs, and stock vLLM's answer to a
recorded folder; the comparison of a served completion with patched transformers and
the Chebyshev mask's two runs with the prefix cache. Imports vLLM only inside the
functions that run it."""
import os
import subprocess
import sys

import torch
import transformers

NEW_TOKENS = 64
TOLERANCE = 1e-4


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


def hf_logprobs(model, inputs, tokens):
    """float64 [len(tokens), vocab]: transformers' log-probs for each of `tokens` given the
    prompt and the tokens before it (one forward over prompt + tokens)."""
    ids = torch.cat([inputs["input_ids"], torch.tensor([tokens])], dim=1)
    kwargs = dict(inputs, input_ids=ids, attention_mask=torch.ones_like(ids))
    with torch.no_grad():
        logits = model(**kwargs).logits[0, inputs["input_ids"].shape[1] - 1:-1]
    return torch.log_softmax(logits.double(), dim=-1)


def check_greedy_logprobs(every, inputs, served, what, suppress):
    """Asserts that vLLM's greedy completion `served` (prompt ids, tokens, log-probs) is
    what transformers' log-probs `every` (float64 [NEW_TOKENS, vocab], each step given the
    tokens before it) say: the prompt tokenised alike, every log-prob within TOLERANCE, every
    token the best outside `suppress` (within TOLERANCE). Returns the served tokens' log-probs
    in `every`."""
    prompt_ids, tokens, logprobs = served
    assert prompt_ids == inputs["input_ids"][0].tolist(), f"vLLM and transformers tokenised {what} differently"
    assert len(tokens) == NEW_TOKENS
    reference = every[torch.arange(NEW_TOKENS), tokens]
    diff = (torch.tensor(logprobs, dtype=torch.float64) - reference).abs().max().item()
    assert diff <= TOLERANCE, f"log-probs differ by {diff:.2e} for {what}"
    allowed = every.clone()
    allowed[:, suppress] = -float("inf")
    shortfall = (allowed.max(dim=-1).values - reference).max().item()
    assert shortfall <= TOLERANCE, f"vLLM chose a token {shortfall:.2e} below the best for {what}"
    return reference


def compare(model, inputs, served, what, suppress):
    """Asserts that vLLM's greedy completion is patched transformers': every log-prob equal
    within TOLERANCE, every token transformers' greedy choice (within TOLERANCE of the
    best), and transformers' own generate (KV cache) the same tokens but at a tie.
    Returns (transformers' log-probs, the step where generate parted at a tie, or None)."""
    tokens = served[1]
    reference = hf_logprobs(model, inputs, tokens)
    check_greedy_logprobs(reference, inputs, served, what, suppress)
    out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, suppress_tokens=suppress)
    generated = out[0, inputs["input_ids"].shape[1]:].tolist()
    parted = next((k for k in range(NEW_TOKENS) if generated[k] != tokens[k]), None)
    if parted is not None:  # allowed only at a tie: both tokens within TOLERANCE of each other
        gap = abs(reference[parted, generated[parted]] - reference[parted, tokens[parted]]).item()
        assert gap <= TOLERANCE, f"greedy tokens part at step {parted} (gap {gap:.2e}) for {what}"
    return reference, parted


def check_batch(model, stock, prompts, served, inputs_of, suppress):
    """Every served completion is patched transformers' (`compare`); against `stock` (the
    unpatched model, or None to skip), image prompts differ by more than 1e-3 and text
    prompts are within TOLERANCE (text alone is plain RoPE under c2rope); greedy runs part
    at a tie in one prompt at most. inputs_of(prompt): transformers' inputs for a prompt."""
    parted = []
    for prompt, result in zip(prompts, served):
        inputs = inputs_of(prompt)
        reference, step = compare(model, inputs, result, repr(prompt["prompt"]), suppress)
        parted += [] if step is None else [step]
        if stock is None:
            continue
        stock_diff = (hf_logprobs(stock, inputs, result[1]) - reference).abs().max().item()
        if "multi_modal_data" in prompt:  # the comparison sees positions: the model's own give other numbers
            assert stock_diff > 1e-3, f"{prompt['prompt']!r}: the unpatched model is within {stock_diff:.1e}"
        else:
            assert stock_diff <= TOLERANCE, f"{prompt['prompt']!r}: {stock_diff:.2e} from the unpatched model"
    assert len(parted) <= 1, f"greedy runs parted at ties in {len(parted)} of {len(prompts)} prompts"


def chebyshev_runs(llm, prompts, model, causal, inputs_of, vocab_size, suppress, image_token):
    """Serves `prompts` twice on one engine with prefix caching (the engine's block size
    chosen so that the last prompt's first block ends inside its image): every completion
    of both runs is patched transformers' (`compare`), greedy runs part at a tie in at most
    one prompt a run, the last prompt is more than 1e-3 away from `causal` (the same
    model under the causal mask), and a prompt of the second run starts inside an image
    (its cached prefix ends between two `image_token`s). inputs_of(prompt): transformers'
    inputs for a prompt."""
    inside = 0
    for run in range(2):
        cached = []
        served = served_greedy(llm, prompts, vocab_size, suppress, cached)
        parted = []
        for prompt, result, hits in zip(prompts, served, cached):
            inputs = inputs_of(prompt)
            reference, step = compare(model, inputs, result, repr(prompt["prompt"]), suppress)
            parted += [] if step is None else [step]
            if run == 0 and prompt is prompts[-1]:
                away = (hf_logprobs(causal, inputs, result[1]) - reference).abs().max().item()
                assert away > 1e-3, f"the causal mask gives nearly the same log-probs ({away:.1e})"
            ids = result[0]
            inside += run == 1 and 0 < hits < len(ids) and ids[hits - 1] == ids[hits] == image_token
        assert len(parted) <= 1, f"greedy runs parted at ties in {len(parted)} of {len(prompts)} prompts"
    assert inside >= 1, "no prompt of the second run started inside an image"


def causal_image_gaps(llm, prompts, processor, model, logprobs_of, suppress):
    """What stock vLLM's CPU backend computes for a model whose image tokens attend each
    other both ways (Gemma 3 / 4): serves `prompts` greedily on `llm` and asserts that
    every prompt equals transformers with causal image rows (`logprobs_of(model, inputs,
    tokens, image_block=False)`, within TOLERANCE) and every text prompt transformers' own
    model; returns, per image prompt, how far vLLM is from transformers' own model."""
    served = served_greedy(llm, prompts, len(processor.tokenizer), suppress)
    gaps = []
    for prompt, (prompt_ids, tokens, logprobs) in zip(prompts, served):
        images = prompt.get("multi_modal_data", {}).get("image")
        inputs = processor(text=[prompt["prompt"]], images=images, return_tensors="pt")
        assert prompt_ids == inputs["input_ids"][0].tolist(), "vLLM and transformers tokenised a prompt differently"
        assert len(tokens) == NEW_TOKENS
        served_lp = torch.tensor(logprobs, dtype=torch.float64)
        causal = (served_lp - logprobs_of(model, inputs, tokens, image_block=False)).abs().max().item()
        own = (served_lp - logprobs_of(model, inputs, tokens, image_block=True)).abs().max().item()
        assert causal <= TOLERANCE, f"vLLM differs from causal-image transformers by {causal:.2e}: {prompt}"
        if images is None:
            assert own <= TOLERANCE, f"vLLM differs from transformers by {own:.2e} on a text prompt"
        else:
            gaps.append(own)
    return gaps
