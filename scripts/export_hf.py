"""Export a jaxchat run folder (pretrain, SFT, PPO policy, reward model) as a Hugging Face
checkpoint (a reward model as *ForSequenceClassification, one label).

    python -m scripts.export_hf --workdir runs/pipeline_tiny/ppo --out exports/ppo_hf
    # then, in Python: transformers.AutoModelForCausalLM.from_pretrained("exports/ppo_hf")

Writes config.json (the transformers ≥ 5 rope_parameters and the legacy rope_theta /
rope_scaling, so every transformers version reads the same RoPE), sharded safetensors with
model.safetensors.index.json, and the tokenizer files an imported model brought. The dtype is
the source's (imported models) or bfloat16; float16 is refused. One tensor is gathered at a
time; files are written by process 0.
"""

from absl import flags

from train import cli, hf_interop

_WORKDIR = flags.DEFINE_string("workdir", None, "jaxchat run folder")
_OUT = flags.DEFINE_string("out", None, "folder to write the Hugging Face checkpoint into")
_ARCH = flags.DEFINE_enum("architecture", None, ["LlamaForCausalLM", "Qwen2ForCausalLM",
                                                 "MistralForCausalLM"],
                          "default: the imported one, else Llama (Qwen2 for q/k/v biases)")
_DTYPE = flags.DEFINE_string("dtype", None, "float32 or bfloat16 (default: the source's)")
_SHARD = flags.DEFINE_integer("max_shard_mb", 2048, "largest safetensors file")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    index = hf_interop.export_checkpoint(_WORKDIR.value, _OUT.value, _ARCH.value, _DTYPE.value,
                                         _SHARD.value << 20)
    files = sorted(set(index["weight_map"].values()))
    print(f"wrote {len(index['weight_map'])} tensors ({index['metadata']['total_size'] / 1e6:.1f}"
          f" MB) in {len(files)} files to {_OUT.value}")


if __name__ == "__main__":
    cli.run(main)
