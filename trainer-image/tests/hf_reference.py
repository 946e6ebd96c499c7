"""Reference side of the Hugging Face parity tests (test-only; needs torch and transformers).

  hf_reference.py make FAMILY OUT_DIR CONFIG_JSON
      A seeded random model saved with save_pretrained in OUT_DIR/model, and reference logits for a
      fixed batch (one row left-padded) in OUT_DIR/reference.safetensors.
  hf_reference.py generate MODEL_DIR REFERENCE N OUT
      Greedy generate() of N tokens for the reference batch (left padding, no EOS), saved as
      OUT (safetensors, "sequences").
  hf_reference.py tokenize OUT_DIR TEXTS_JSON [VOCAB MERGES]
      With VOCAB/MERGES: GPT2TokenizerFast from those files, saved with save_pretrained in
      OUT_DIR/gpt2. Always: a small BPE trained here whose post-processor adds BOS (Llama-like),
      saved as OUT_DIR/bos/tokenizer.json. Writes OUT_DIR/ids.json: {"gpt2": [...], "bos": [...]}.
  hf_reference.py score MODEL_DIR REFERENCE OUT
      AutoModelForSequenceClassification scores of the reference batch's ids without padding
      (mask all ones), saved as OUT (safetensors, "scores").
  hf_reference.py logprobs MODEL_DIR TEXT
      Prints {"tokens": [...], "logprobs": [...]} for TEXT with MODEL_DIR's tokenizer and causal LM:
      logprobs[i] is log p(tokens[i+1] | tokens[:i+1]).
  hf_reference.py hub_folder OUT_DIR FAMILY CONFIG_JSON DTYPE [TEMPLATE_FILE]
      A folder as the Hub has them: a seeded random FAMILY model saved in DTYPE (bfloat16,
      float16, float32) with a byte-level BPE tokenizer trained here (EOS "</s>", the chat
      special tokens, TEMPLATE_FILE as its chat template) and a generation_config.json.
  hf_reference.py chat OUT_DIR TEMPLATE_FILE BOS EOS CASES_JSON
      A byte-level BPE tokenizer trained here with chat special tokens, BOS/EOS as given ("" for
      none) and TEMPLATE_FILE as its chat template, saved in OUT_DIR; prints, for each case
      {"messages", "generation"}, apply_chat_template's {"text", "ids"}, or {"error"}.
  hf_reference.py check MODEL_DIR REFERENCE
      Loads MODEL_DIR with transformers and compares its logits on the reference batch with the
      reference logits; prints the max abs difference, exits 1 above 1e-4.
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

TOLERANCE = 1e-4


def causal_lm(model_dir):
    """The folder's causal LM in fp32 (whatever dtype it was saved in) with eager attention, the
    reference implementation of every family."""
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager",
                                                dtype=torch.float32).eval()


def batch(vocab_size):
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, vocab_size, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    ids[1, :3] = 0
    return ids, mask


def logits(model, ids, mask):
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


def make(family, out_dir, config_json):
    torch.manual_seed(0)
    config = CONFIG_MAPPING[family](**json.loads(config_json))
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config).eval()
    # Random init leaves some parameters (biases, norms) at constants; perturb everything so the
    # parity check covers every tensor.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(f"{out_dir}/model", safe_serialization=True)
    ids, mask = batch(model.config.vocab_size)
    save_file({"input_ids": ids, "attention_mask": mask, "logits": logits(model, ids, mask).contiguous()},
              f"{out_dir}/reference.safetensors")


def check(model_dir, reference):
    ref = load_file(reference)
    model = causal_lm(model_dir)
    ours = logits(model, ref["input_ids"], ref["attention_mask"])
    keep = ref["attention_mask"].bool()
    diff = (ours - ref["logits"]).abs()[keep].max().item()
    print(f"max abs diff {diff:.3g}")
    sys.exit(0 if diff <= TOLERANCE else 1)


def generate(model_dir, reference, n, out):
    ref = load_file(reference)
    model = causal_lm(model_dir)
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        seq = model.generate(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"],
                             max_new_tokens=int(n), do_sample=False, pad_token_id=0)
    save_file({"sequences": seq.contiguous()}, out)


def tokenize(out_dir, texts_json, vocab=None, merges=None):
    import os
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

    texts = json.loads(texts_json)
    ids = {}
    if vocab:
        gpt2 = GPT2TokenizerFast(vocab_file=vocab, merges_file=merges)
        gpt2.save_pretrained(f"{out_dir}/gpt2")
        ids["gpt2"] = [gpt2(t)["input_ids"] for t in texts]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"])
    bpe.train_from_iterator(texts * 3, trainer)
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    os.makedirs(f"{out_dir}/bos", exist_ok=True)
    bpe.save(f"{out_dir}/bos/tokenizer.json")
    fast = PreTrainedTokenizerFast(tokenizer_file=f"{out_dir}/bos/tokenizer.json", eos_token="</s>")
    fast.save_pretrained(f"{out_dir}/bos")
    ids["bos"] = [fast(t)["input_ids"] for t in texts]
    json.dump(ids, open(f"{out_dir}/ids.json", "w"))


def hub_folder(out_dir, family, config_json, dtype, template_file=None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = ["the cat sat on the mat", "copy: red blue green => red blue green", "2 + 3 = 5"] * 5
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>"] + CHAT_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", pad_token="</s>")
    if template_file:
        fast.chat_template = open(template_file).read()
    torch.manual_seed(0)
    config = CONFIG_MAPPING[family](**json.loads(config_json), vocab_size=len(fast),
                                    eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    model = AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype))
    model.generation_config.eos_token_id = fast.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    fast.save_pretrained(out_dir)


CHAT_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                 "<|im_start|>", "<|im_end|>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]


def chat(out_dir, template_file, bos, eos, cases_json):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    cases = json.loads(cases_json)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [m["content"] for c in cases for m in c["messages"]] * 3
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=CHAT_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos or None, eos_token=eos or None)
    fast.chat_template = open(template_file).read()
    fast.save_pretrained(out_dir)
    out = []
    for case in cases:
        args = dict(add_generation_prompt=case["generation"])
        try:
            out.append({"text": fast.apply_chat_template(case["messages"], tokenize=False, **args),
                        "ids": list(fast.apply_chat_template(case["messages"], tokenize=True, **args))})
        except Exception as e:  # the template's raise_exception
            out.append({"error": str(e)})
    print(json.dumps(out))


def score(model_dir, reference, out):
    from transformers import AutoModelForSequenceClassification

    ids = load_file(reference)["input_ids"]
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        scores = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, 0]
    save_file({"scores": scores.contiguous()}, out)


def logprobs(model_dir, text):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(text, return_tensors="pt")["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    picked = lp.gather(-1, ids[0, 1:, None])[:, 0]
    print(json.dumps({"tokens": ids[0].tolist(), "logprobs": picked.tolist()}))


if __name__ == "__main__":
    {"make": make, "check": check, "generate": generate, "tokenize": tokenize, "score": score, "logprobs": logprobs,
     "hub_folder": hub_folder, "chat": chat}[sys.argv[1]](*sys.argv[2:])
