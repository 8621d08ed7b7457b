"""The RabbitMQ broker (`amqp://`, needs pika: `pip install 'ebbtide[rabbitmq]'`).

    broker.py      RabbitMQBroker: the producer/admin side (BlockingConnection) and the
                   Broker methods the worker calls
    consumer.py    the worker's deliveries and settlements
    subscriptions.py  its basic.consume consumers and their prefetch windows
    connection.py  the worker's supervised AsyncioConnection, RPCs, publisher confirms
    transport.py   the patch of pika's plaintext transport (write-through, corked sends)
    acks.py        the fewest basic.ack frames (pure) and when they go out
    window.py      the prefetch window sized by time (pure)
    topology.py    queue names, arguments, URL options (pure)
    publish.py     message builders, publisher confirms for the producer
    rate.py        global rate limits as token queues
    rpc.py         awaiting a pika callback
    stats.py       BrokerStats from the management API and heartbeats (pure)

Nothing here is imported by `ebbtide.brokers` until an amqp:// URL is opened.
"""
