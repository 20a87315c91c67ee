"""The files that ship with Refinery: trained weights and their training logs (harness.assets finds them).

    models/     toy.safetensors, the toy backend (`refinery train-world`)
    verifiers/  world_reward.safetensors, the world_reward verifier (`refinery train-reward`)
    world/      probe.safetensors, world-bench's attribute probe (`refinery train-probe`)
    methods/    <model>/<method>_<tag>.safetensors, the trained methods' adapters of each base model,
                each beside the <method>_<tag>.log.jsonl of the `refinery train` run that made it
"""
