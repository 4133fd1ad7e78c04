"""Who is calling and what they may do: credentials, identities, the one authorization
rule, and the audit trail (docs/security.md)."""
