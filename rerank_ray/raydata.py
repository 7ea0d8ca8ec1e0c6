"""Ray Data helpers shared by the stages that check tables on Ray Data.

:func:`iter_sorted_groups` walks a dataset's rows grouped by a key in key order, while
the driver holds one group at a time: :mod:`rerank_ray.corpus_check` finds repeated pids
and wanted passages with it, :mod:`rerank_ray.cache` checks supplied vectors' ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa


def iter_sorted_groups(
    make_dataset: Callable[[], object], key: str, keep: Callable[[pa.Table], pa.Table]
) -> Iterator[list[dict]]:
    """The rows of a dataset that ``keep`` leaves, grouped by ``key``, in ``key`` order.

    Ray Data sorts the rows by ``key``; ``keep`` reduces each sorted block to the rows that
    can matter, and must keep the block's first and last rows (their key may go on in the
    next block). The driver reads what is kept in order and yields one key's rows at a
    time, so it holds one group, not the dataset.

    The sort is Ray Data's pull-based one: range-partitioned, one partition per input block,
    so a task holds about one block however large the dataset, and a small dataset is one
    task. (Ray 2.60's default shuffle plans 200 partitions when it cannot count the blocks,
    as with Parquet reads, which costs seconds even on a tiny corpus.)

    Args:
        make_dataset: Builds the Ray Data dataset (with a ``key`` column). Called here, because
            a dataset runs with the Ray Data context it was created in, and the sort's
            settings are made here.
        key: The column to group by.
        keep: ``sorted block -> rows of it`` (a ``pyarrow.Table``), run on Ray's workers.

    Example::

        import ray.data

        items = lambda: ray.data.from_items([{"id": "b"}, {"id": "a"}, {"id": "b"}])
        [[r["id"] for r in g] for g in iter_sorted_groups(items, "id", lambda b: b)]
        # [['a'], ['b', 'b']]
    """
    import ray.data
    from ray.data.context import ShuffleStrategy

    context = ray.data.DataContext.get_current().copy()
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    context.execution_options.preserve_order = True  # blocks reach the driver in key order
    with ray.data.DataContext.current(context):
        kept = make_dataset().sort(key).map_batches(keep, batch_format="pyarrow", batch_size=None)
        group: list[dict] = []
        for row in kept.iter_rows():
            if group and row[key] != group[0][key]:
                yield group
                group = []
            group.append(row)
        if group:
            yield group
