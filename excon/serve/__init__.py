"""Serving a registered model: the shared model functions (`model`), image decoding with limits
(`images`), the KServe server and its page (`server`), the InferenceService (`deploy`).

`model` is what the pyfunc, `excon explain` and the server all import; only `server` imports
kserve and only `deploy` imports kubernetes, so the pyfunc stays light.
"""
