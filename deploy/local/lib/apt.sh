# Shared by deploy/local/up and deploy/local/test (sourced): Debian packages the build and
# the tests need, installed when missing.

# Installs Debian package $2 when command $1 is missing (as root with apt-get), or stops
# with what to install. With $1 = "-", when the package itself is not installed.
apt_need() {
  if [ "$1" = - ]; then
    dpkg -s "$2" >/dev/null 2>&1 && return 0
  else
    command -v "$1" >/dev/null 2>&1 && return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing $2 (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
  else
    echo "fleetledger: $2 is missing: install Debian's $2 package (apt-get install $2)" >&2
    exit 1
  fi
}
# What building fleetledger needs besides Rust and a C compiler: librdkafka is built
# with TLS and SASL against the system's OpenSSL.
build_packages() {
  apt_need - libssl-dev
  apt_need - pkg-config
}
