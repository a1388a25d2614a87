#!/bin/bash
# Firefox ESR headless with a token key through p11agent-pkcs11.so: a
# profile whose NSS database has the module (modutil -add) and trusts the
# test CA, and a user.js setting security.default_personal_cert to "Select
# Automatically"; `firefox-esr --headless --profile DIR --screenshot FILE
# URL`. The server is mtls-httpd.py, not s_server -naccept 1: Firefox opens
# more than one connection (speculative ones it drops), and with a server
# gone after the first it waits until its timeout. A case passes when
# Firefox exits 0 with a screenshot, the server logged the request for the
# page with a token key's certificate (CN) over the TLS version, and the
# agent signed. Firefox picks the certificate (the first that fits; here
# rsa2048): the case names the key it took.
#
# Firefox runs as root in CI: headless, it needs nothing for that. It has
# its own HOME under $T.
#
# Chromium is not tested: headless Chromium 156 waits for someone to pick
# the client certificate (it made the connection, got the
# CertificateRequest, and hung until killed after 40 s); auto-selection
# needs the AutoSelectCertificateForUrls policy, which is read only from
# /etc/chromium/policies/managed/, and a test writes nothing outside $T.
. "$(dirname "$0")/lib-module.sh"

prog_require firefox-esr certutil modutil python3
mod_setup

mkdir -p "$T/www"
echo '<html><body><p id="p11agent">p11agent page</p></body></html>' >"$T/www/index.html"

# nssdb DIR: an NSS database with the module and the test CA trusted.
nssdb() {
	mkdir -p "$1"
	with_timeout "$IT_TIMEOUT" certutil -N -d "sql:$1" --empty-password &&
		with_timeout "$IT_TIMEOUT" modutil -dbdir "sql:$1" -add p11agent -libfile "$P11MOD" \
			-force &&
		with_timeout "$IT_TIMEOUT" certutil -A -d "sql:$1" -n "p11agent test CA" -t CT,C,C \
			-i "$T/ca.pem"
}

FF_PROFILE=$T/firefox/profile
{
	nssdb "$FF_PROFILE" &&
		cat >"$FF_PROFILE/user.js" <<'EOF'
user_pref("security.default_personal_cert", "Select Automatically");
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("app.update.enabled", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("toolkit.telemetry.reportingpolicy.firstRun", false);
EOF
} >"$T/firefox-setup.log" 2>&1 || { tap_diag <"$T/firefox-setup.log"; tap_bail "Firefox profile setup failed"; }

firefox_get() {
	local dir=$1 url=$2
	(cd "$dir" && HOME=$T/firefox MOZ_CRASHREPORTER_DISABLE=1 \
		with_timeout $((IT_TIMEOUT * 3)) firefox-esr --headless --profile "$FF_PROFILE" \
		--screenshot "$dir/page.png" "$url") >"$dir/browser.log" 2>&1 || return 1
	[ -s "$dir/page.png" ] || { echo "no screenshot" >&2; return 1; }
}

# browser_case BROWSER VERSION: BROWSER_get fetches https://localhost:PORT/
# from mtls-httpd.py (TLS VERSION); sets CASE_KEY to the CN the server saw.
browser_case() {
	local b=$1 v=$2 dir rc=0
	dir=$T/$b-$v
	mkdir -p "$dir"
	CASE_KEY=unknown
	sig_mark || return 1
	httpd_start "$dir" "$T/www" "$v" || return 1
	"${b}_get" "$dir" "https://localhost:$HTTPD_PORT/" || rc=$?
	stop_pid "$HTTPD_PID" || true
	cat "$HTTPD_LOG"
	[ "$rc" -eq 0 ] || { echo "$b failed (status $rc):" >&2; tail -n 20 "$dir/browser.log" >&2; return 1; }
	CASE_KEY=$(sed -n "s#^request TLSv$v CN=\\([^ ]*\\) GET / *\$#\\1#p" "$HTTPD_LOG" | head -n 1)
	[[ " $IT_KEYS " == *" $CASE_KEY "* ]] ||
		{ echo "no GET / with a token key's certificate over TLSv$v in the server's log" >&2; return 1; }
	echo "$b used the token key $CASE_KEY"
	sig_signed 1
}

# run_case BROWSER VERSION WHAT: a TAP case named after the key the
# browser chose ("p256 TLS 1.3 firefox-esr ..."), as mkmatrix.py reads it.
run_case() {
	local log=$T/case-$((TAP_N + 1)).log
	if browser_case "$1" "$2" >"$log" 2>&1; then
		tap_ok "$CASE_KEY TLS $2 $3"
	else
		tap_not_ok "$CASE_KEY TLS $2 $3" "$log" "$T/agent.log"
	fi
}

for v in 1.3 1.2; do
	run_case firefox "$v" "firefox-esr --headless, module in the profile's NSS database"
done

tap_done
