"""Who a request is, and what they may do: API tokens, role bindings, the first admin.

`conveyor.auth.service` is the interface the HTTP API and the CLI use; `conveyor.auth.tokens`
makes and reads the token strings; the decision itself is pure (conveyor.core.access). See
docs/access.md.
"""
