#!/usr/bin/env python3
"""Goldens for what sampling adds to the logits and reports about them, from transformers in float32:

  Tests/Fixtures/models/tiny-llama/goldens/sampling.json

Each case decodes greedily from one of the model goldens' prompts (hf.json) for STEPS tokens, with OpenAI's
presence/frequency penalties and logit bias applied to the logits as OpenAI documents them

    mu[j] <- mu[j] - c[j] * frequency_penalty - (c[j] > 0) * presence_penalty + logit_bias[j]

(c[j]: how often token j was generated so far in this request; the prompt does not count, as in vLLM), and
records, per step, the chosen token, what the adjustment added to each token's logit, the margin between the two largest adjusted logits (the engine's choice
is comparable where it exceeds the numerical noise), and the log-probabilities of the *raw* logits
(log_softmax before any adjustment, computed in float64): the chosen token's and the TOP largest.

Also the prompt's log-probabilities (completions' `echo` with `logprobs`): each token of the longest prompt
given the ones before it, with the TOP largest at its position.

Usage: python3 tools/gen_sampling_goldens.py   (torch==2.13.0 CPU, transformers; the repo's tiny-llama hf/)
"""
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, RepetitionPenaltyLogitsProcessor

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "Tests/Fixtures/models/tiny-llama"
STEPS = 16
TOP = 5

CASES = [
    dict(name="plain", prompt=0, presence=0.0, frequency=0.0, bias={}),
    dict(name="penalties", prompt=1, presence=0.8, frequency=0.6, bias={}),
    dict(name="negative-penalties", prompt=2, presence=-1.5, frequency=0.0, bias={}),
    # The bias ids are filled in below from the plain greedy run of the same prompt: its first token banned,
    # its third token pushed up.
    dict(name="bias", prompt=0, presence=0.0, frequency=0.4, bias=None),
    # The prompt is not penalised: prompt 0 followed by its first 8 plain greedy tokens (which repeat), then strong
    # penalties — counting the prompt would push the continuation off the tokens the prompt repeats.
    dict(name="prompt-not-penalised", prompt=0, presence=2.0, frequency=1.0, bias={}, extend=8),
    # vLLM's and transformers' repetition penalty (transformers' own RepetitionPenaltyLogitsProcessor), which does count
    # the prompt: the same repeating prompt, so counting only the generated tokens would decode differently.
    dict(name="repetition", prompt=0, presence=0.0, frequency=0.0, bias={}, extend=8, repetition=1.6),
]


def r8(x: float) -> float:
    return float(f"{x:.8g}")


def decode(model, prompt, presence, frequency, bias, repetition=1.0, prompt_counts=True):
    ids = list(prompt)
    generated = []
    steps = []
    for _ in range(STEPS):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
        raw = torch.log_softmax(logits, dim=-1)
        adj = logits.clone()
        if repetition != 1.0:
            seen = ids if prompt_counts else generated
            adj = RepetitionPenaltyLogitsProcessor(repetition)(torch.tensor([seen or [0]]), adj[None, :])[0] if seen else adj
        counts = {}
        for t in generated:
            counts[t] = counts.get(t, 0) + 1
        for t, c in counts.items():
            adj[t] -= c * frequency + presence
        for t, b in bias.items():
            adj[t] += b
        top2 = torch.topk(adj, 2)
        chosen = int(top2.indices[0])
        margin = float(top2.values[0] - top2.values[1])
        top = torch.topk(raw, TOP)
        # The adjusted logits where they changed, by token (what the penalties and bias did, numerically).
        changed = sorted(set(counts) | set(bias) | (set(ids) if repetition != 1.0 else set()))
        steps.append(dict(token=chosen, margin=r8(margin), logprob=r8(float(raw[chosen])),
                          top_tokens=[int(i) for i in top.indices], top_logprobs=[r8(float(v)) for v in top.values],
                          adjusted={str(t): r8(float(adj[t] - logits[t])) for t in changed}))
        ids.append(chosen)
        generated.append(chosen)
    return steps


def main():
    hf = json.loads((MODEL / "goldens/hf.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(str(MODEL / "hf"), dtype=torch.float32)
    model.eval()
    out = []
    for case in CASES:
        prompt = hf["cases"][case["prompt"]]["prompt_ids"]
        if case.get("extend"):
            prompt = prompt + [s["token"] for s in decode(model, prompt, 0.0, 0.0, {})[:case["extend"]]]
        bias = case["bias"]
        if bias is None:
            plain = decode(model, prompt, 0.0, 0.0, {})
            bias = {plain[0]["token"]: -100.0, plain[2]["token"]: 3.5}
        repetition = case.get("repetition", 1.0)
        steps = decode(model, prompt, case["presence"], case["frequency"], bias, repetition)
        if repetition != 1.0:
            alt = decode(model, prompt, case["presence"], case["frequency"], bias, repetition, prompt_counts=False)
            assert [s["token"] for s in alt] != [s["token"] for s in steps], "the case cannot tell whether the prompt counts"
        out.append(dict(name=case["name"], prompt_ids=prompt, presence_penalty=case["presence"], repetition_penalty=repetition,
                        frequency_penalty=case["frequency"], logit_bias={str(k): v for k, v in bias.items()},
                        steps=steps))
    # Prompt log-probabilities (completions' echo with logprobs): each prompt token given the ones before it, from
    # one forward pass over the longest prompt.
    prompt = hf["cases"][2]["prompt_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0].double()
    raw = torch.log_softmax(logits, dim=-1)
    scored = []
    for p in range(1, len(prompt)):
        top = torch.topk(raw[p - 1], TOP)
        scored.append(dict(token=prompt[p], logprob=r8(float(raw[p - 1, prompt[p]])),
                           top_tokens=[int(i) for i in top.indices], top_logprobs=[r8(float(v)) for v in top.values]))
    doc = dict(model="tiny-llama", reference=f"transformers float32 (torch {torch.__version__}), log_softmax in float64",
               formula="mu[j] - c[j]*frequency_penalty - (c[j]>0)*presence_penalty + logit_bias[j]; c over generated tokens",
               top=TOP, cases=out, prompt=dict(prompt_ids=prompt, positions=scored))
    path = MODEL / "goldens/sampling.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
