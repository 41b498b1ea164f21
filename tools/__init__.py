"""The tools layer: the `callsense` command and what it drives (the one-machine mesh, its supervisor, the
Envoy configuration, code generation, the demo call, offline analysis), plus helpers for the tests and
benches. Tools may import the runtime and every service; nothing imports a tool."""
