"""Pure builders of every object a TaskQueue owns, as plain dicts ready for the API server.

  common.py    ownership, the broker Secret, hardening, the broker workload/Service/policy
  redis.py     the managed Redis
  rabbitmq.py  the managed RabbitMQ
  worker.py    the worker Deployment the tick scales
  merge.py     merging the user's pod template over ours, and telling drift from defaults

Nothing here talks to Kubernetes: provision.py sends what these return.
"""
