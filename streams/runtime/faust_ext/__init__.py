"""The only place that touches Faust's, mode's or aiokafka's private API.

Written against the versions below (pinned in pyproject.toml). ``PRIVATE_API`` lists every
private name used or overridden here; ``problems()`` says which of them the installed libraries
no longer have. tests/unit/runtime/test_faust_ext.py fails loudly on any, and on other versions,
so that an upgrade is a deliberate step: read the changed code, adapt, then move the pins.

- consumer.py: the batched consumer (Faust's fetch loop, getmany, acks, seeks).
- tables.py: tables whose changelogs feed the worker's state; a table manager without its
  start-up sleep.
- producer.py: the aiokafka producer inside Faust's.
- worker.py: Faust's worker without its spinner.
- assignor.py: Faust's partition assignor, giving a departed owner's partitions to the worker
  keeping their standby copies.
"""

from __future__ import annotations

import importlib
import inspect
import re
from importlib.metadata import version

TARGETS = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1"}

# (module, class or "" for the module itself, name): attributes and methods of these classes
# (or names in these modules) that faust_ext uses or overrides. A name set in ``__init__`` rather
# than on the class is looked for as ``self.<name>`` in the class's source.
PRIVATE_API: tuple[tuple[str, str, str], ...] = (
    ("faust.transport.consumer", "", "CONSUMER_FETCHING"),
    ("faust.transport.consumer", "Consumer", "_drain_messages"),
    ("faust.transport.consumer", "Consumer", "_to_message"),
    ("faust.transport.consumer", "Consumer", "_wait_next_records"),
    ("faust.transport.consumer", "Consumer", "_commit_offsets"),
    ("faust.transport.consumer", "Consumer", "_add_gap"),
    ("faust.transport.consumer", "Consumer", "_new_offset"),
    ("faust.transport.consumer", "Consumer", "_committed_offset"),
    ("faust.transport.consumer", "Consumer", "_read_offset"),
    ("faust.transport.consumer", "Consumer", "_acked"),
    ("faust.transport.consumer", "Consumer", "_acked_index"),
    ("faust.transport.consumer", "Consumer", "_n_acked"),
    ("faust.transport.consumer", "Consumer", "_waiting_for_ack"),
    ("faust.transport.consumer", "Consumer", "_commit_every"),
    ("faust.transport.consumer", "Consumer", "_buffered_partitions"),
    ("faust.transport.consumer", "Consumer", "_paused_partitions"),
    ("faust.transport.consumer", "Consumer", "_active_partitions"),
    ("faust.transport.consumer", "Consumer", "_gap"),
    ("faust.transport.consumer", "Consumer", "getmany"),
    ("faust.transport.consumer", "Consumer", "perform_seek"),
    ("faust.transport.consumer", "Consumer", "seek"),
    ("faust.transport.consumer", "Consumer", "seek_wait"),
    ("faust.transport.consumer", "Consumer", "on_partitions_revoked"),
    ("faust.transport.consumer", "Consumer", "on_partitions_assigned"),
    ("faust.transport.consumer", "Consumer", "resume_partitions"),
    ("faust.transport.consumer", "Consumer", "flow_active"),
    ("faust.transport.consumer", "Consumer", "suspend_flow"),
    ("faust.transport.consumer", "Consumer", "consumer_stopped_errors"),
    ("faust.transport.consumer", "ThreadDelegateConsumer", "_thread"),
    ("faust.transport.drivers.aiokafka", "Consumer", "_new_consumer_thread"),
    ("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread", "_create_worker_consumer"),
    ("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread", "_ensure_consumer"),
    ("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread", "_consumer"),
    ("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread", "verify_event_path"),
    ("aiokafka.consumer.subscription_state", "TopicPartitionState", "has_valid_position"),
    ("aiokafka.consumer.subscription_state", "TopicPartitionState", "_position"),
    ("aiokafka.consumer.subscription_state", "TopicPartitionState", "paused"),
    ("aiokafka.consumer.subscription_state", "TopicPartitionState", "awaiting_reset"),
    ("aiokafka.consumer.subscription_state", "TopicPartitionState", "highwater"),
    ("aiokafka.consumer.subscription_state", "TopicPartitionState", "timestamp"),
    ("faust.transport.drivers.aiokafka", "Producer", "_ensure_producer"),
    ("faust.transport.drivers.aiokafka", "Producer", "_settings_extra"),
    ("faust.types.tuples", "", "ack_lock"),
    ("faust.tables.base", "Collection", "persisted_offset"),
    ("faust.tables.base", "Collection", "apply_changelog_batch"),
    ("faust.tables.base", "Collection", "on_recovery_completed"),
    ("faust.tables.base", "Collection", "on_rebalance"),
    ("faust.tables.manager", "TableManager", "_update_channels"),
    ("faust.tables.manager", "TableManager", "on_start"),
    ("faust.worker", "Worker", "spinner"),
    ("mode.utils.futures", "", "notify"),
    ("mode.services", "Service", "_stopped"),
    ("aiokafka.consumer.consumer", "AIOKafkaConsumer", "_fetch_max_wait_ms"),
    ("aiokafka.consumer.consumer", "AIOKafkaConsumer", "_subscription"),
    ("aiokafka.consumer.consumer", "AIOKafkaConsumer", "_coordinator"),
    ("aiokafka.consumer.consumer", "AIOKafkaConsumer", "_fetcher"),
    ("aiokafka.consumer.consumer", "AIOKafkaConsumer", "_client"),
    ("aiokafka.consumer.fetcher", "Fetcher", "_records"),
    ("aiokafka.consumer.fetcher", "Fetcher", "_in_flight"),
    ("aiokafka.consumer.group_coordinator", "GroupCoordinator", "generation"),
    ("aiokafka.consumer.group_coordinator", "GroupCoordinator", "_start_heartbeat_task"),
    ("aiokafka.consumer.group_coordinator", "GroupCoordinator", "_heartbeat_task"),
    ("aiokafka.consumer.group_coordinator", "GroupCoordinator", "_stop_heartbeat_task"),
    ("aiokafka.consumer.group_coordinator", "GroupCoordinator",
     "_stop_commit_offsets_refresh_task"),
    ("aiokafka.consumer.group_coordinator", "GroupCoordinator", "_maybe_leave_group"),
    ("faust.transport.consumer", "ConsumerThread", "on_partitions_assigned"),
    ("faust.assignor.partition_assignor", "PartitionAssignor", "_update_member_urls"),
    ("faust.assignor.partition_assignor", "PartitionAssignor",
     "_global_table_standby_assignments"),
    ("faust.assignor.partition_assignor", "PartitionAssignor", "_member_urls"),
    ("faust.assignor.partition_assignor", "PartitionAssignor", "_perform_assignment"),
)


def problems() -> list[str]:
    """What the installed libraries do not have of ``TARGETS`` and ``PRIVATE_API``."""
    found = []
    for dist, wanted in TARGETS.items():
        installed = version(dist)
        if installed != wanted:
            found.append(f"{dist} {installed} is installed; faust_ext was written for {wanted}")
    for module_name, cls_name, name in PRIVATE_API:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            found.append(f"module {module_name} is gone")
            continue
        owner = getattr(module, cls_name, None) if cls_name else module
        where = f"{module_name}.{cls_name}" if cls_name else module_name
        if owner is None:
            found.append(f"{where} is gone")
        elif not hasattr(owner, name) and not _set_in_source(owner, name):
            found.append(f"{where}.{name} is gone")
    return found


def _set_in_source(cls: object, name: str) -> bool:
    """Whether ``name`` is an instance attribute set by ``cls`` or its bases."""
    for klass in getattr(cls, "__mro__", ()):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if re.search(rf"self\.{re.escape(name)}\s*[:=]", source):
            return True
    return False
