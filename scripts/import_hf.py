"""Import a Hugging Face Llama / Qwen2 / Mistral checkpoint as a jaxchat run folder.

    python -m scripts.import_hf --hf_dir ~/models/Qwen2.5-0.5B --workdir runs/qwen_base
    python -m scripts.train --config configs/sft/tiny.py --workdir runs/qwen_sft \\
        --config.init_from=runs/qwen_base ...

Reads config.json (both the transformers ≥ 5 and the legacy rope keys) and model.safetensors
or a sharded model.safetensors.index.json, tensor by tensor onto the mesh; pickle (.bin)
checkpoints are refused. The folder gets ckpt/0 (params), config.json (the model, a default
mesh) and the source's tokenizer files under hf/. --max_seq_len is the working context (KV
caches are sized by it), never more than the checkpoint's max_position_embeddings.
"""

from absl import flags

from train import cli, hf_interop

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face model folder (config.json, "
                              "safetensors)")
_WORKDIR = flags.DEFINE_string("workdir", None, "jaxchat run folder to create")
_MAX_SEQ_LEN = flags.DEFINE_integer("max_seq_len", 4096, "working context length")
_DTYPE = flags.DEFINE_enum("compute_dtype", None, ["float32", "bfloat16"],
                           "compute dtype (default: bfloat16 for a bf16 checkpoint, else fp32)")
_MESH = flags.DEFINE_list("mesh", None, "data,fsdp,tensor sizes (default 1,-1,1)")
flags.mark_flags_as_required(["hf_dir", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    mesh = None
    if _MESH.value:
        if len(_MESH.value) != 3:
            raise ValueError(f"--mesh={','.join(_MESH.value)}: want data,fsdp,tensor")
        mesh = dict(zip(("data", "fsdp", "tensor"), map(int, _MESH.value), strict=True))
    with cli.folder_lock(_WORKDIR.value, "import"):
        config, _ = hf_interop.import_checkpoint(_HF_DIR.value, _WORKDIR.value,
                                                 _MAX_SEQ_LEN.value, _DTYPE.value, mesh)
    m = config.model
    print(f"imported {config.hf.architecture} ({m.n_layers} layers, d_model {m.d_model}, "
          f"vocab {m.vocab_size}, rope {m.rope_type} θ={m.rope_theta:g}) into {_WORKDIR.value}")


if __name__ == "__main__":
    cli.run(main)
