"""The study as a Kubeflow Pipelines v2 DAG: compile, submit (kfp.Client), run (kfp.local)."""
