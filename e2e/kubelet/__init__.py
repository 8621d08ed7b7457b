"""The process kubelet: a test-harness kubelet that runs pods as local processes.

There is no Docker (nor any container runtime) on the machines that run the e2e suite and
the demo, and no kube-scheduler either. This package registers a Node, binds unscheduled
pods to it (it is the scheduler too), and runs each mapped container's command as a local
process with the container's env, reporting status like a kubelet would. See the "Process
kubelet" section of e2e/README.md for what it maps and what it does not do.

Pure logic (env resolution, $(VAR) expansion, image mapping, port remapping, status
building) lives in modules without I/O so that e2e/kubelet/tests can test it without a cluster.
"""
