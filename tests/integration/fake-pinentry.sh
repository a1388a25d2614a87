#!/bin/bash
# A scripted pinentry for tests: speaks the Assuan subset p11agentd uses.
# FAKE_PINENTRY_PINS: PINs to answer, one per GETPIN, separated by spaces
#   (the last one repeats); "cancel" answers with a cancellation.
# FAKE_PINENTRY_LOG: every command received is appended here (GETPIN
#   answers are not logged).
# FAKE_PINENTRY_COUNT: a file counting GETPIN requests across runs.
# FAKE_PINENTRY_CONFIRM: a file; while it says "no", CONFIRM is answered
#   with a cancellation (the person pressed Deny); otherwise it allows.
set -u
log=${FAKE_PINENTRY_LOG:-/dev/null}
count_file=${FAKE_PINENTRY_COUNT:-}
read -r -a pins <<<"${FAKE_PINENTRY_PINS:-}"
echo "OK Pleased to meet you"
while IFS= read -r line; do
	echo "$line" >>"$log"
	case $line in
	GETPIN)
		n=0
		[ -n "$count_file" ] && [ -s "$count_file" ] && n=$(cat "$count_file")
		[ -n "$count_file" ] && echo $((n + 1)) >"$count_file"
		idx=$n
		[ "$idx" -ge "${#pins[@]}" ] && idx=$((${#pins[@]} - 1))
		pin=${pins[$idx]:-}
		if [ -z "$pin" ] || [ "$pin" = cancel ]; then
			echo "ERR 83886179 Operation cancelled <Pinentry>"
		else
			echo "D $pin"
			echo "OK"
		fi
		;;
	CONFIRM)
		if [ -n "${FAKE_PINENTRY_CONFIRM:-}" ] && [ "$(cat "$FAKE_PINENTRY_CONFIRM" 2>/dev/null)" = no ]; then
			echo "ERR 83886179 Operation cancelled <Pinentry>"
		else
			echo "OK"
		fi
		;;
	BYE)
		echo "OK closing connection"
		exit 0
		;;
	MESSAGE)
		# stays up like a dialog until killed
		sleep 30
		echo "OK"
		;;
	*) echo "OK" ;;
	esac
done
