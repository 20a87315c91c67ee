"""From overrides to cells: config composition and checks, plug-ins, the generate and score stages,
prompt suites, launchers and the resource checks made before anything runs."""
