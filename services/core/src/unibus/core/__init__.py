"""unibus shared library: every service, the migration job and the CLI build on it.

Modules are small and single-purpose; import what you need from them directly
(``from unibus.core.nkeys import KeyPair``). Services never import each other, only this.
"""
