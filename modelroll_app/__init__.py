"""The composition root: the `modelroll` command with every service's verbs, and `up`/`demo`/`traffic`, which
run the three services together in one process. Nothing imports this package; it imports the kernel
(`modelroll/`) and the services (`router/`, `controller/`, `optimizer/`)."""
