"""Training of the methods that learn (LoRA, InitNoiseRefiner, AutoRefiner): `refinery train`.

- adapters:    LoRA (peft) on a backend's denoiser, the zero-output noise-refiner network, and
               `TrainedMethod`, the base class of methods whose weights come from a checkpoint;
- checkpoints: adapter files (safetensors, adapter weights only, with the resolved training config and
               the base model's digest in the metadata), resume state, the training log, shipped names;
- objectives:  the registered objectives (harness.registry.OBJECTIVES): reward mixture and DMD;
- trainer:     the loop. Every step is one rollout of harness.rollout (the one loop) with an exit step,
               the same keyed noise source and ledger as sampling.

Nothing here is imported by `import harness`; the CLI imports it when `refinery train` runs.
"""
