# Shared by the launch scripts (sourced, not run).

show() {  # print a command so that it can be pasted back into a shell
  local out=() a q="'"
  for a in "$@"; do
    if [[ -z "$a" || "$a" =~ [^A-Za-z0-9_./:=,@%+~-] ]]; then
      out+=("$q${a//$q/$q\\$q$q}$q")
    else
      out+=("$a")
    fi
  done
  echo "${out[*]}"
}
