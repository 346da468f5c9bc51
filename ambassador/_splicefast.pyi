"""Types of the C module ``ambassador/_splicefast.c`` (built where a C compiler is present)."""

SLOW: int
EOF: int
READ_ERR: int
WRITE_ERR: int
PARTIAL: int
MAX_EVENTS: int

class Table:
    def __init__(self) -> None: ...
    def set(self, fd: int, dst: int, /) -> None: ...
    def clear(self, fd: int, /) -> int: ...
    def take(self, fd: int, /) -> int: ...
    def fast(self, fd: int, on: bool, /) -> None: ...
    def gen(self, fd: int, /) -> int: ...
    def last(self, fd: int, /) -> float: ...
    def poll(
        self,
        epfd: int,
        timeout_ms: int,
        spare_r: int,
        spare_w: int,
        chunk: int,
        burst: int,
        copy: int = 0,
        /,
    ) -> list[tuple[int, int, int, int, int, int]]: ...
