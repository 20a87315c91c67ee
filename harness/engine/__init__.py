"""The one autoregressive rollout loop and what plugs into it: hooks (Method), noise, ledger, samplers,
the Metric contract, typed parameters and the lazy registries plug-ins register in."""
