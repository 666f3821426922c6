"""The Redis layer: Function call helpers, the Lua library's assembly and loading, the embedded
server."""
