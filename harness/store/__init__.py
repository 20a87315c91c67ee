"""Where results live: cells keyed by their run spec, leases, manifests and atomic files."""
