"""The protocols at the edge: each wire format's routes, a thin translation to and from the core.

`native` and `service` are the service's own API, `openai` the OpenAI-compatible one; `errors` is the one
error table with a renderer per protocol family, `deps` what routes receive, `body_limit` the request
size guard in front of them all.
"""
