#!/usr/bin/env bash
# dnsmasq (Debian's dnsmasq-base: the program, no service) for the DNS
# discovery interop test, which starts it itself on a loopback port with a
# hosts file it rewrites (and SIGHUPs) while the mesh follows the name.
source "$(dirname "$0")/lib.sh"
apt_install dnsmasq-base
/usr/sbin/dnsmasq --version | head -1
