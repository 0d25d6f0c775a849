# shellcheck shell=bash
# Command-line option parsing for recipe scripts (Kaldi semantics).
#
# Source this file after giving every option a default value:
#
#     stage=1
#     nj=4
#     use_gpu=false
#     help_message="Usage: $0 [options] <data-dir>"
#     . utils/parse_options.sh
#     # "$@" now holds only the positional arguments.
#
# Rules:
#   --foo-bar VALUE and --foo_bar VALUE (also --foo-bar=VALUE) set the shell
#       variable foo_bar, which must already be defined; an unknown option is
#       an error that names it (exit 1).
#   If the default of a variable is true or false, the new value must be true
#       or false as well.
#   --help or -h prints $help_message and exits 0.
#   --config FILE reads FILE, whose lines are either options ("--nj 8") or
#       assignments to already-defined variables ("nj=8"); blank lines and
#       lines starting with # are ignored.  Config files are applied before
#       the other options, whatever their position, so the command line
#       always wins over a config file.
#   Parsing stops at the first argument that is not an option, or after "--".
#
# Every helper defined here starts with _parse_options_ and is removed at the
# end, so the sourcing script's namespace is left as it was.

_parse_options_script=${0##*/}

_parse_options_fail() {
  echo "$_parse_options_script: $*" >&2
  exit 1
}

# _parse_options_set OPTION VALUE ORIGIN: assign VALUE to the variable named by OPTION.
_parse_options_set() {
  local option=$1 value=$2 origin=$3
  local name=${option#--}
  name=${name//-/_}
  if [[ ! $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
    _parse_options_fail "invalid option '$option'$origin"
  fi
  if [ -z "${!name+defined}" ]; then
    _parse_options_fail "unknown option '$option'$origin (no variable '$name' is defined by this script; see --help)"
  fi
  local old_value=${!name}
  if [[ $old_value == true || $old_value == false ]] && [[ $value != true && $value != false ]]; then
    _parse_options_fail "option '$option'$origin expects true or false, got '$value'"
  fi
  printf -v "$name" '%s' "$value"
}

# _parse_options_read_config FILE: apply a config file (see the rules above).
_parse_options_read_config() {
  local config=$1 line line_number=0 words
  [ -f "$config" ] || _parse_options_fail "config file '$config' given by --config does not exist"
  while IFS= read -r line || [ -n "$line" ]; do
    line_number=$((line_number + 1))
    # Strip leading white space; skip blank lines and comments.
    line=${line#"${line%%[![:space:]]*}"}
    [[ -z $line || $line == \#* ]] && continue
    if [[ $line == --* ]]; then
      # Split the line into words with the shell's quoting rules, without
      # expanding anything (no command substitution can run).
      # Split the line into words with the shell's quoting rules but without
      # expanding anything: xargs understands quotes and runs nothing else.
      local split
      if ! split=$(printf '%s\n' "$line" | xargs printf '%s\n' 2> /dev/null && printf end); then
        _parse_options_fail "cannot parse '$config' line $line_number (unbalanced quotes?): $line"
      fi
      mapfile -t words <<< "${split%end}"
      unset 'words[${#words[@]}-1]'  # the empty element after the final newline
      local option=${words[0]} value
      if [[ $option == *=* ]]; then
        value=${option#*=}
        option=${option%%=*}
        [ "${#words[@]}" -eq 1 ] || _parse_options_fail "'$config' line $line_number: expected '--name value', got: $line"
      else
        [ "${#words[@]}" -eq 2 ] || _parse_options_fail "'$config' line $line_number: expected '--name value', got: $line"
        value=${words[1]}
      fi
      [ "$option" = --config ] && _parse_options_fail "'$config' line $line_number: config files cannot include other config files"
      _parse_options_set "$option" "$value" " in '$config' line $line_number"
    elif [[ $line =~ ^([A-Za-z_][A-Za-z0-9_]*)= ]]; then
      local name=${BASH_REMATCH[1]}
      [ -n "${!name+defined}" ] || _parse_options_fail "'$config' line $line_number sets '$name', which is not an option of this script"
      local old_value=${!name}
      eval "$line" || _parse_options_fail "'$config' line $line_number failed: $line"
      if [[ $old_value == true || $old_value == false ]] && [[ ${!name} != true && ${!name} != false ]]; then
        _parse_options_fail "'$config' line $line_number: '$name' expects true or false, got '${!name}'"
      fi
    else
      _parse_options_fail "'$config' line $line_number: expected '--name value' or 'name=value', got: $line"
    fi
  done < "$config"
}

# First pass: find --help and the config files among the options.
_parse_options_configs=()
_parse_options_args=("$@")
_parse_options_i=0
while [ "$_parse_options_i" -lt "${#_parse_options_args[@]}" ]; do
  _parse_options_word=${_parse_options_args[$_parse_options_i]}
  case $_parse_options_word in
    --help | -h)
      printf '%s\n' "${help_message:-No help message is defined for $_parse_options_script.}"
      exit 0 ;;
    --) break ;;
    --config=*)
      _parse_options_configs+=("${_parse_options_word#--config=}")
      _parse_options_i=$((_parse_options_i + 1)) ;;
    --config)
      [ $((_parse_options_i + 1)) -lt "${#_parse_options_args[@]}" ] || _parse_options_fail "option '--config' needs a value"
      _parse_options_configs+=("${_parse_options_args[$((_parse_options_i + 1))]}")
      _parse_options_i=$((_parse_options_i + 2)) ;;
    --*=*) _parse_options_i=$((_parse_options_i + 1)) ;;
    --*) _parse_options_i=$((_parse_options_i + 2)) ;;
    *) break ;;
  esac
done
for _parse_options_word in ${_parse_options_configs[@]+"${_parse_options_configs[@]}"}; do
  _parse_options_read_config "$_parse_options_word"
done

# Second pass: apply the command-line options and drop them from "$@".
while [ $# -gt 0 ]; do
  case $1 in
    --)
      shift
      break ;;
    --config=*) shift ;;
    --config) shift 2 ;;
    --*=*)
      _parse_options_set "${1%%=*}" "${1#*=}" ""
      shift ;;
    --*)
      [ $# -ge 2 ] || _parse_options_fail "option '$1' needs a value"
      _parse_options_set "$1" "$2" ""
      shift 2 ;;
    *) break ;;
  esac
done

unset -f _parse_options_fail _parse_options_set _parse_options_read_config
unset _parse_options_script _parse_options_configs _parse_options_args _parse_options_i _parse_options_word
true
