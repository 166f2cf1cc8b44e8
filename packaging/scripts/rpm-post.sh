# RPM %post: $1 is the number of installed instances after this transaction (1 install, 2 upgrade).
if [ "${1:-1}" -gt 1 ]; then after_install upgrade; else after_install install; fi
exit 0
