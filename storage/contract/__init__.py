"""The storage contract suite: every rule of ``jobsd.storage.base``, as tests a
backend can run against itself.

A backend's test module is a few lines::

    from jobsd.storage.contract import StorageContract

    class TestMyStorage(StorageContract):
        def make_storage(self):          # a fresh, empty store, for each test
            return MyStorage(...)

        def open_again(self):            # shared backends: another broker's handle
            return MyStorage(...)

pytest collects the ``test_*`` methods. The suite reads what a backend
declares (``Storage.transactional``, ``Storage.shared``) and skips what does
not apply, never a backend by its name. Nothing here imports pytest until a
test must be skipped.
"""

from jobsd.storage.contract.adding import AddingContract
from jobsd.storage.contract.base import ARGS, BROKER, LEASE, NOW, grant, job
from jobsd.storage.contract.leases import LeaseContract
from jobsd.storage.contract.operators import OperatorContract, together


class StorageContract(AddingContract, LeaseContract, OperatorContract):
    """Every rule of the contract, for one backend."""


__all__ = [
    "ARGS",
    "BROKER",
    "LEASE",
    "NOW",
    "StorageContract",
    "grant",
    "job",
    "together",
]
