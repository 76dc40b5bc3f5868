"""Kubeflow Pipelines v2 components: one thin wrapper per stage of the study.

Each component imports the stage from `excon.stages` inside its body (lightweight components ship
only their function's source; everything else comes from the project image) and converts between
typed KFP artifacts and the run directories the stages read and write. No science here.
"""

# The project image (infra/docker/Dockerfile), set explicitly: kfp's default base image is a bare
# Python that lacks excon, and it changes between kfp releases. `excon-pipeline compile --image`
# replaces it on every task.
DEFAULT_IMAGE = "ghcr.io/excon-ml/excon:0.1.0"
