# Shared by hack/envtest.sh, hack/realnode.sh and hack/image.sh (sourced, not
# run): building Kubernetes binaries from the k8s.io/kubernetes Go module, and
# installing missing Debian packages. Messages go to stderr through `log`,
# which the sourcing script defines.
#
# k8s.io/kubernetes requires its staging modules at v0.0.0 through local
# replace lines, so a wrapper module pins each of them to v0.<minor>.<patch>.
# envtest.sh and realnode.sh use the same wrapper and flags (CGO_ENABLED=0, the same
# -ldflags), so a second build reuses the Go build cache of the first.

# k8s_minor VERSION: prints the minor version (1.37.2 -> 37).
k8s_minor() {
  echo "$1" | cut -d. -f2
}

# k8s_ldflags VERSION: the -ldflags that make /version report vVERSION.
k8s_ldflags() {
  echo "-s -w -X k8s.io/component-base/version.gitVersion=v$1 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(k8s_minor "$1")"
}

# k8s_wrapper_module MODULE VERSION: writes ./go.mod, a module named MODULE that
# requires k8s.io/kubernetes vVERSION with every staging module replaced.
k8s_wrapper_module() {
  local module="$1" version="$2" gomod staging_version
  gomod="$(go mod download -json "k8s.io/kubernetes@v$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  staging_version="v0.$(k8s_minor "$version").${version##*.}"
  {
    echo "module $module"
    echo
    echo "go 1.25"
    echo
    echo "require k8s.io/kubernetes v$version"
    echo
    echo "replace ("
    grep -oE 'k8s.io/[a-z0-9-]+ => ./staging/src/k8s.io/[a-z0-9-]+' "$gomod" | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } > go.mod
}

# k8s_build VERSION BINDIR CMD...: builds k8s.io/kubernetes/cmd/CMD for each
# CMD into BINDIR in one `go build`, from a wrapper module in the current
# directory. Build output goes to stderr.
k8s_build() {
  local version="$1" bindir="$2"
  shift 2
  local pkgs=() c
  for c in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  k8s_wrapper_module "recac.io/envtest" "$version"
  GOFLAGS="-mod=mod" CGO_ENABLED=0 go mod download >&2 || true
  GOFLAGS="-mod=mod" CGO_ENABLED=0 go get "${pkgs[0]}@v$version" >&2
  GOFLAGS="-mod=mod" CGO_ENABLED=0 go build -ldflags "$(k8s_ldflags "$version")" -o "$bindir/" "${pkgs[@]}" >&2
}

deb_installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# deb_need PKG...: installs the packages that are not installed yet.
deb_need() {
  local missing=() p
  for p in "$@"; do deb_installed "$p" || missing+=("$p"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null || { log "missing packages ${missing[*]} and no apt-get"; return 1; }
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  log "installing Debian packages: ${missing[*]}"
  if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
    "${sudo[@]}" apt-get update -q >&2
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}
