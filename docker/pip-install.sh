#!/bin/sh
# Install the given requirement (the project's source with extras) into /opt/ebbtide, a
# venv, and add the image's non-root user. Run inside an image build by the Dockerfiles.
#
# /wheels holds wheels built on the host (`make images`): then the install is offline
# (--no-index), with pip itself run from its wheel, since the base may have no pip.
# Otherwise pip comes from the base image and the packages from PyPI.
set -eu
if ls /wheels/*.whl >/dev/null 2>&1; then
  python3 -m venv --without-pip /opt/ebbtide
  pip_wheel=$(ls /wheels/pip-*.whl | head -n1)
  /opt/ebbtide/bin/python "$pip_wheel/pip" install --no-cache-dir \
    --no-index --find-links /wheels "$@"
else
  python3 -m venv /opt/ebbtide
  /opt/ebbtide/bin/pip install --no-cache-dir "$@"
  /opt/ebbtide/bin/pip uninstall -y -q pip
fi
rm -rf /src /wheels /usr/local/lib/ebbtide-pip-install.sh
# A numeric, non-root user with no login and no home of its own (HOME=/tmp).
if ! grep -q '^ebbtide:' /etc/passwd; then
  echo 'ebbtide:x:10001:10001:ebbtide:/tmp:/usr/sbin/nologin' >>/etc/passwd
  echo 'ebbtide:x:10001:' >>/etc/group
fi
