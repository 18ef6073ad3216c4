"""The errors ldcache raises for things a user can fix. The CLI prints their message, without a
traceback, and exits with status 2.

LDCacheError
├── BadInputError            an argument, option, config, annotation file or checkpoint is wrong
│   └── UntrustedCheckpointError   a pickle that needs more than weights-only loading was refused
└── StoreError               something about a store
    ├── StoreNotFoundError       nothing is stored at that path or URL
    ├── StoreFormatError         not an ldcache store, another format version, a bad attribute or layout
    ├── StoreIncompleteError     its dump has not finished
    ├── StoreCorruptError        a chunk is damaged or missing (a checksum, `ldcache verify`)
    ├── StoreIOError             the storage failed to answer (after retries): retry, nothing is damaged
    ├── StoreMismatchError       made for another dataset, teacher, head, pipeline or command
    ├── StoreLockedError         another dump is writing it
    └── DiskFullError            its disk is full, or too full for the rest of the dump
"""


class LDCacheError(Exception):
    """Something the user can fix (a path, an option, a mismatched store); the message says how."""


class BadInputError(LDCacheError):
    """An input given to ldcache is wrong: a path, an option, a config, an annotation file."""


class UntrustedCheckpointError(BadInputError):
    """A checkpoint that is not signed by this user needs more than weights-only loading."""


class StoreError(LDCacheError):
    """A store cannot be used as asked."""


class StoreNotFoundError(StoreError):
    """Nothing is stored at the given path or URL."""


class StoreFormatError(StoreError):
    """Not an ldcache store of this format version, or its attributes or layout are not as documented."""


class StoreIncompleteError(StoreError):
    """The store's dump stopped before the end; `--resume` finishes it."""


class StoreCorruptError(StoreError):
    """A chunk of the store is damaged or missing; `dump-teacher ... --resume` redoes its block."""


class StoreIOError(StoreError):
    """Reading or writing the store failed for a reason other than a missing object, after retries."""


class StoreMismatchError(StoreError):
    """The store was made for another dataset, teacher, head geometry, pipeline or dump command."""


class StoreLockedError(StoreError):
    """Another dump holds the store's lock (`<store>.lock`): one dump writes a store at a time."""


class DiskFullError(StoreError):
    """The store's disk has no room for the rest of the dump; `dump-teacher ... --resume` goes on
    once there is."""
