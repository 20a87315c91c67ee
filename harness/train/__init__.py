"""Training of the methods that learn (LoRA, InitNoiseRefiner, AutoRefiner): `refinery train`.

- checkpoints: resume state and the training log;
- objectives:  the registered objectives (harness.engine.registry.OBJECTIVES): reward mixture and DMD;
- trainer:     the loop. Every step is one rollout of harness.engine.rollout (the one loop) with an exit step,
               the same keyed noise source and ledger as sampling.

What sampling a trained method needs lies outside this package, so sampling never imports it:
harness.train.adapters (LoRA on a backend's denoiser, the zero-output noise-refiner network, and
`TrainedMethod`, the base class of methods whose weights come from a checkpoint) and
harness.train.adapter_files (the adapter file: its format, shipped names, reading and writing).

Nothing here is imported by `import harness`; the CLI imports it when `refinery train` runs.
"""
