"""The pure domain: events, the threshold index, the segment families of a partition, the change
ledger, and the rows the API lists in the contract's order.

Nothing here knows of Kafka, Faust, aiohttp or any byte layout (that is ``streams.codec``): the
runtime feeds events in and reads values out, and unit tests drive it alone.
"""
