"""Every byte layout on Kafka: input records, the repartition topic's compact events, the keys
and values of the two changelogs, count-change events, dead letters, and the names of topics
and tables. Each decoder checks what it reads: anyone who can write a topic can write anything.
"""
