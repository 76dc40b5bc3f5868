"""A vendored CRD's OpenAPI schema made strict, shared by the manifest tests."""


def strict(schema: object) -> object:
    """Unknown fields forbidden wherever the CRD does not explicitly allow them (an object
    with properties, no additionalProperties and no x-kubernetes-preserve-unknown-fields), as
    the API server's structural pruning would drop them silently."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema
