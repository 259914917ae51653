"""The built-in demo served by `shmchannels serve` with no arguments: a page
at ``/``, a WebSocket echo at ``/ws/echo/`` and chat rooms (groups) at
``/ws/room/<name>/``, written as plain Channels-1 consumers."""
