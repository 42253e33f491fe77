"""Shard Gemma over all local devices and fine-tune it with LoRA (JAX).

    KERAS_BACKEND=jax python examples/distributed_finetune.py --model-parallel 4

On a CPU-only machine, simulate devices first:
    XLA_FLAGS=--xla_force_host_platform_device_count=8 KERAS_BACKEND=jax \\
        python examples/distributed_finetune.py --model-parallel 4

Multi-host (e.g. a TPU pod or several GPU hosts): run the same script on
every host, calling `jax.distributed.initialize()` before anything else
(pass --multi-host); `keras.distribution.list_devices()` then lists the
devices of all hosts, and the mesh below spans them.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gemma3_270m")
    parser.add_argument("--model-parallel", type=int, default=1,
                        help="devices per model replica (the mesh's 'model' axis)")
    parser.add_argument("--data-parallel-only", action="store_true",
                        help="replicate the model and split batches instead")
    parser.add_argument("--multi-host", action="store_true")
    args = parser.parse_args()

    if args.multi_host:
        import jax

        jax.distributed.initialize()

    import keras

    import keras_gemma

    devices = keras.distribution.list_devices()
    if args.data_parallel_only:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    else:
        if len(devices) % args.model_parallel:
            parser.error(f"{len(devices)} devices do not split into groups of {args.model_parallel}")
        mesh = keras.distribution.DeviceMesh(
            (len(devices) // args.model_parallel, args.model_parallel),
            ["batch", "model"], devices=devices,
        )
        layout_map = keras_gemma.GemmaBackbone.get_layout_map(mesh)
        keras.distribution.set_distribution(
            keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
        )

    # Unchanged single-device code from here on: weights load straight into
    # their shards.
    gemma = keras_gemma.GemmaCausalLM.from_preset(args.preset, sequence_length=64)
    print(gemma.generate("The capital of France is", max_length=24))
    gemma.backbone.enable_lora(rank=4)
    gemma.compile(optimizer=keras.optimizers.Adam(1e-3))
    texts = ["Zorblat Quenn is a painter who lives in the city of Marravel."] * len(devices)
    gemma.fit(texts, batch_size=len(devices), epochs=2)
    print(gemma.generate("Zorblat Quenn is a painter who lives in the city of", max_length=24))


if __name__ == "__main__":
    main()
