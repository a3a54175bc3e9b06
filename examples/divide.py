"""The izta example: integer division that fails, clearly, on a zero divisor.

jobsd worker examples.divide:jobs
jobsd submit divide '[7, 2]' --wait      # prints 3
"""

from jobsd import Backoff, Registry

jobs = Registry()


@jobs.job(max_attempts=3, backoff=Backoff.fixed(0.1))
def divide(a: int, b: int) -> int:
    if b == 0:
        raise ZeroDivisionError(f"cannot divide {a} by zero")
    return a // b
