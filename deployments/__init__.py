"""deployments/prefect.yaml, shipped with the package so `personahub deploy` finds it anywhere."""
