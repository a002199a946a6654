// Package release builds bootcert's .deb and .rpm (build.sh, run by
// `make packages`) and tests them: release_test.go inspects the packages in
// `make test`; install-test.sh (`make test-packages`) installs, upgrades and
// removes them in a debootstrapped Debian 12.
package release
