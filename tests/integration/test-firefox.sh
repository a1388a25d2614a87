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
# its own HOME under $T. A browser whose handshake failed waits for its own
# timeout: each run is bounded by twice the client timeout (60 s; a good
# run takes a few seconds), so a broken module fails every case within
# meson's timeout.
#
# Chromium (headless, the module in $HOME/.pki/nssdb, Chromium's NSS
# database on Linux) waits for a person to pick the client certificate
# unless the AutoSelectCertificateForUrls policy names one; Chromium reads
# policies only from /etc/chromium/policies/managed/. The test writes its
# policy (URL pattern and the certificate's subject CN, so each key type
# is chosen in turn) under $T and runs Chromium in a mount namespace of its
# own where $T's directory is bind-mounted on /etc/chromium: nothing
# outside $T changes. That needs root (CI runs as root; as another user the
# Chromium cases fail, they are not skipped: unshare --user would give the
# browser another uid than the agent sees). Chromium as root needs
# --no-sandbox.
. "$(dirname "$0")/lib-module.sh"

prog_require firefox-esr chromium certutil modutil python3 unshare mount
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
{
	nssdb "$T/chromium/home/.pki/nssdb" &&
		mkdir -p "$T/chromium/etc/policies/managed" &&
		cp /etc/chromium/master_preferences "$T/chromium/etc/"
} >"$T/chromium-setup.log" 2>&1 ||
	{ tap_diag <"$T/chromium-setup.log"; tap_bail "Chromium NSS database setup failed"; }

firefox_get() {
	local dir=$1 url=$2
	(cd "$dir" && HOME=$T/firefox MOZ_CRASHREPORTER_DISABLE=1 \
		with_timeout $((IT_TIMEOUT * 2)) firefox-esr --headless --profile "$FF_PROFILE" \
		--screenshot "$dir/page.png" "$url") >"$dir/browser.log" 2>&1 || return 1
	[ -s "$dir/page.png" ] || { echo "no screenshot" >&2; return 1; }
}

# chromium_get DIR URL KEY: Chromium's DOM of the page, the policy picking
# KEY's certificate.
chromium_get() {
	local dir=$1 url=$2 k=$3 e=$T/chromium/etc
	if [ "$(id -u)" -ne 0 ]; then
		echo "Chromium cases need root: the policy goes in by a bind mount on /etc/chromium" >&2
		return 1
	fi
	printf '{"AutoSelectCertificateForUrls": ["{\\"pattern\\":\\"%s\\",\\"filter\\":{\\"SUBJECT\\":{\\"CN\\":\\"%s\\"}}}"]}\n' \
		"${url%/}" "$k" >"$e/policies/managed/p11agent.json"
	cat "$e/policies/managed/p11agent.json"
	# shellcheck disable=SC2016 # sh -c's own $1 and $@
	HOME=$T/chromium/home with_timeout $((IT_TIMEOUT * 2)) unshare --mount -- sh -c \
		'mount --bind "$1" /etc/chromium && shift && exec "$@"' sh "$e" \
		chromium --headless --no-sandbox --disable-gpu --no-first-run \
		--user-data-dir="$T/chromium/data" --dump-dom "$url" >"$dir/page" 2>"$dir/browser.log" ||
		return 1
	grep -q 'p11agent page' "$dir/page" || { echo "the page is not in the DOM" >&2; return 1; }
}

# browser_case BROWSER VERSION [KEY]: BROWSER_get fetches https://localhost:PORT/
# from mtls-httpd.py (TLS VERSION), with KEY when the browser can be told;
# sets CASE_KEY to the CN the server saw.
browser_case() {
	local b=$1 v=$2 want=${3:-} dir got rc=0
	dir=$T/$b-$v${want:+-$want}
	mkdir -p "$dir"
	sig_mark || return 1
	httpd_start "$dir" "$T/www" "$v" || return 1
	"${b}_get" "$dir" "https://localhost:$HTTPD_PORT/" "$want" || rc=$?
	stop_checked "$HTTPD_PID" mtls-httpd.py || return 1
	cat "$HTTPD_LOG"
	[ "$rc" -eq 0 ] || { echo "$b failed (status $rc):" >&2; tail -n 20 "$dir/browser.log" >&2; return 1; }
	got=$(sed -n "s#^request TLSv$v CN=\\([^ ]*\\) GET / *\$#\\1#p" "$HTTPD_LOG" | head -n 1)
	[[ " $IT_KEYS " == *" $got "* ]] ||
		{ echo "no GET / with a token key's certificate over TLSv$v in the server's log" >&2; return 1; }
	# the case is named after the key asked for, or else the key taken
	[ -n "$want" ] || CASE_KEY=$got
	echo "$b used the token key $got"
	[ -z "$want" ] || [ "$got" = "$want" ] ||
		{ echo "the policy named $want, $b used $got" >&2; return 1; }
	sig_signed 1
}

# run_case BROWSER VERSION WHAT [KEY]: a TAP case named after the key the
# browser chose ("p256 TLS 1.3 firefox-esr ..."), as mkmatrix.py reads it.
run_case() {
	local log=$T/case-$((TAP_N + 1)).log
	CASE_KEY=${4:-unknown}
	if browser_case "$1" "$2" "${4:-}" >"$log" 2>&1; then
		tap_ok "$CASE_KEY TLS $2 $3"
	else
		tap_not_ok "$CASE_KEY TLS $2 $3" "$log" "$T/agent.log"
	fi
}

for v in 1.3 1.2; do
	run_case firefox "$v" "firefox-esr --headless, module in the profile's NSS database"
done

# NSS has no Ed25519 client authentication (test-nss.sh)
for k in rsa2048 p256 p384; do
	for v in 1.3 1.2; do
		run_case chromium "$v" "chromium --headless, module in ~/.pki/nssdb, policy picks the key" "$k"
	done
done

tap_done
