package compat_test

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"gopkg.in/yaml.v3"

	"github.com/bootcert/bootcert/cloud"
)

// The IAM check: every AWS call the cloud functions make is granted by the
// role policy cloud/template.yaml gives the function, and every action the
// template grants exists. Found by parsing the Go source (go/ast), not by
// a list kept by hand:
//
//  1. cloud/aws: each method of Registry, Store and Publisher, and the SDK
//     calls inside it (r.IoT.X -> iot:X; s.S3.X -> s3:X, with the IAM
//     names S3 uses: ListObjectsV2 -> s3:ListBucket, PresignGetObject ->
//     s3:GetObject). Publisher.Publish is the data plane's HTTPS Publish
//     (iot:Publish) after DescribeEndpoint when IOT_DATA_ENDPOINT is unset
//     (the template does not set it).
//  2. the packages cloud.Build wires into each function (cloud/functions.go):
//     every call by the name of one of those methods.
//  3. the template: each function's Policies, Effect Allow actions.
//
// Actions are checked, not resource ARNs or conditions (the lab's IAM
// enforcement, issue 11, checks those at run time).

// S3 IAM action for each S3 client method the code uses (IAM names differ
// from API names for listing: "Actions, resources, and condition keys for
// Amazon S3", https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazons3.html).
var s3ActionForMethod = map[string]string{"ListObjectsV2": "ListBucket", "PresignGetObject": "GetObject"}

// iotDataPlaneActions are iot: actions that are not control-plane methods
// of *iot.Client (the data plane: https://docs.aws.amazon.com/service-authorization/latest/reference/list_awsiot.html).
var iotDataPlaneActions = map[string]bool{"Publish": true, "Connect": true, "Subscribe": true, "Receive": true}

// functionPackages are the packages each function's handler is built from
// (cloud.Build: which handler, and whether it gets fleet.Trust).
var functionPackages = map[string][]string{
	cloud.Activator:  {"activator", "fleet"},
	cloud.Vendor:     {"certvendor", "fleet"},
	cloud.Reaper:     {"reaper"},
	cloud.Activation: {"activation", "fleet"},
	cloud.Renewal:    {"renewal", "fleet"},
}

func parseDir(t *testing.T, dir string) []*ast.File {
	t.Helper()
	fset := token.NewFileSet()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	return files
}

func methodSet(v any) map[string]bool {
	m := map[string]bool{}
	tp := reflect.TypeOf(v)
	for i := 0; i < tp.NumMethod(); i++ {
		m[tp.Method(i).Name] = true
	}
	return m
}

// adapterActions maps "Type.Method" of cloud/aws to the IAM actions it needs.
func adapterActions(t *testing.T) map[string][]string {
	t.Helper()
	iotMethods, s3Methods := methodSet(&iot.Client{}), methodSet(&s3.Client{})
	direct := map[string]map[string]bool{}
	calls := map[string]map[string]bool{} // same-receiver method calls, for the closure
	for _, f := range parseDir(t, "../aws") {
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Recv == nil || fd.Body == nil {
				continue
			}
			recv := fd.Recv.List[0].Type
			if st, ok := recv.(*ast.StarExpr); ok {
				recv = st.X
			}
			id, ok := recv.(*ast.Ident)
			if !ok {
				continue
			}
			key := id.Name + "." + fd.Name.Name
			direct[key], calls[key] = map[string]bool{}, map[string]bool{}
			ast.Inspect(fd.Body, func(n ast.Node) bool {
				ce, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				sel, ok := ce.Fun.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				name := sel.Sel.Name
				switch x := sel.X.(type) {
				case *ast.SelectorExpr: // r.IoT.X, s.S3.X
					switch {
					case x.Sel.Name == "IoT" && iotMethods[name]:
						direct[key]["iot:"+name] = true
					case x.Sel.Name == "S3" && s3Methods[name]:
						direct[key]["s3:"+s3Action(name)] = true
					}
				case *ast.Ident:
					switch {
					case x.Name == "s3" && strings.HasPrefix(name, "New") && strings.HasSuffix(name, "Paginator"):
						direct[key]["s3:"+s3Action(strings.TrimSuffix(strings.TrimPrefix(name, "New"), "Paginator"))] = true
					case x.Name == "p" || x.Name == "r" || x.Name == "s":
						calls[key][id.Name+"."+name] = true
					}
				case *ast.CallExpr: // s3.NewPresignClient(...).PresignGetObject
					if strings.HasPrefix(name, "Presign") {
						direct[key]["s3:"+s3Action(name)] = true
					}
				}
				return true
			})
		}
	}
	// The data plane's Publish (HTTPS POST /topics, SigV4) and the endpoint
	// lookup behind it: not SDK calls, so named here.
	if _, ok := direct["Publisher.Publish"]; !ok {
		t.Fatal("cloud/aws has no Publisher.Publish any more: update the IAM check")
	}
	direct["Publisher.Publish"]["iot:Publish"] = true
	direct["Publisher.Publish"]["iot:DescribeEndpoint"] = true

	out := map[string][]string{}
	for key := range direct {
		seen, acts := map[string]bool{}, map[string]bool{}
		var walk func(string)
		walk = func(k string) {
			if seen[k] {
				return
			}
			seen[k] = true
			for a := range direct[k] {
				acts[a] = true
			}
			for c := range calls[k] {
				walk(c)
			}
		}
		walk(key)
		for a := range acts {
			out[key] = append(out[key], a)
		}
		sort.Strings(out[key])
	}
	return out
}

func s3Action(method string) string {
	if a, ok := s3ActionForMethod[method]; ok {
		return a
	}
	return method
}

// neededActions: per function, the actions its packages' calls need.
func neededActions(t *testing.T, adapters map[string][]string) map[string]map[string][]string {
	t.Helper()
	byName := map[string][]string{} // method name -> "Type.Method" keys
	for k := range adapters {
		_, m, _ := strings.Cut(k, ".")
		byName[m] = append(byName[m], k)
	}
	out := map[string]map[string][]string{} // function -> action -> callers
	for fn, pkgs := range functionPackages {
		out[fn] = map[string][]string{}
		for _, pkg := range pkgs {
			for _, f := range parseDir(t, filepath.Join("..", pkg)) {
				ast.Inspect(f, func(n ast.Node) bool {
					ce, ok := n.(*ast.CallExpr)
					if !ok {
						return true
					}
					sel, ok := ce.Fun.(*ast.SelectorExpr)
					if !ok {
						return true
					}
					for _, k := range byName[sel.Sel.Name] {
						for _, a := range adapters[k] {
							out[fn][a] = append(out[fn][a], pkg+" -> "+k)
						}
					}
					return true
				})
			}
		}
	}
	return out
}

// grantedActions reads each function's Allow actions from the template.
func grantedActions(t *testing.T, path string) map[string]map[string]bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	get := func(n *yaml.Node, key string) *yaml.Node {
		if n == nil || n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				return n.Content[i+1]
			}
		}
		return nil
	}
	strs := func(n *yaml.Node) []string {
		switch {
		case n == nil:
			return nil
		case n.Kind == yaml.ScalarNode:
			return []string{n.Value}
		case n.Kind == yaml.SequenceNode:
			var s []string
			for _, c := range n.Content {
				s = append(s, c.Value)
			}
			return s
		}
		return nil
	}
	out := map[string]map[string]bool{}
	res := get(doc.Content[0], "Resources")
	for i := 0; i+1 < len(res.Content); i += 2 {
		id, r := res.Content[i].Value, res.Content[i+1]
		if get(r, "Type").Value != "AWS::Serverless::Function" {
			continue
		}
		out[id] = map[string]bool{}
		pols := get(get(r, "Properties"), "Policies")
		if pols == nil {
			continue
		}
		for _, p := range pols.Content {
			if p.Kind != yaml.MappingNode {
				t.Fatalf("%s: %s: policy %q is not an inline document (SAM policy templates and managed policies are not checked)", path, id, p.Value)
			}
			for _, st := range get(p, "Statement").Content {
				if e := get(st, "Effect"); e == nil || e.Value != "Allow" {
					continue
				}
				for _, a := range strs(get(st, "Action")) {
					out[id][a] = true
				}
			}
		}
	}
	return out
}

// missingGrants lists, per function, the actions its code needs that the
// template does not grant.
func missingGrants(needed map[string]map[string][]string, granted map[string]map[string]bool) []string {
	var miss []string
	for fn, acts := range needed {
		for a, callers := range acts {
			if !granted[fn][a] && !granted[fn][strings.SplitN(a, ":", 2)[0]+":*"] {
				miss = append(miss, fn+": "+a+" (called via "+strings.Join(dedupe(callers), ", ")+")")
			}
		}
	}
	sort.Strings(miss)
	return miss
}

func dedupe(s []string) []string {
	m := map[string]bool{}
	var out []string
	for _, x := range s {
		if !m[x] {
			m[x] = true
			out = append(out, x)
		}
	}
	sort.Strings(out)
	return out
}

func TestIAMTemplateGrantsEveryCall(t *testing.T) {
	adapters := adapterActions(t)
	for _, must := range []string{"Registry.DescribeCertificate", "Store.Get", "Store.List", "Store.Presign", "Publisher.Publish"} {
		if len(adapters[must]) == 0 {
			t.Fatalf("the source scan found no AWS action for %s (scan broken?): %v", must, adapters)
		}
	}
	needed := neededActions(t, adapters)
	granted := grantedActions(t, templatePath)
	for fn := range functionPackages {
		if granted[fn] == nil {
			t.Fatalf("template has no function %s", fn)
		}
		if len(needed[fn]) == 0 {
			t.Fatalf("%s: the source scan found no AWS call", fn)
		}
	}

	t.Run("ok/every-call-granted", func(t *testing.T) {
		for _, m := range missingGrants(needed, granted) {
			t.Errorf("not granted by cloud/template.yaml: %s", m)
		}
		for fn, acts := range needed {
			var names []string
			for a := range acts {
				names = append(names, a)
			}
			sort.Strings(names)
			var unused []string
			for a := range granted[fn] {
				if acts[a] == nil {
					unused = append(unused, a)
				}
			}
			sort.Strings(unused)
			t.Logf("%s needs %v; granted but not called: %v", fn, names, unused)
		}
	})

	t.Run("ok/every-grant-exists", func(t *testing.T) {
		iotMethods, s3Methods := methodSet(&iot.Client{}), methodSet(&s3.Client{})
		s3IAM := map[string]bool{}
		for m := range s3Methods {
			s3IAM[s3Action(m)] = true
		}
		for fn, acts := range granted {
			for a := range acts {
				svc, name, _ := strings.Cut(a, ":")
				ok := false
				switch svc {
				case "iot":
					ok = iotMethods[name] || iotDataPlaneActions[name]
				case "s3":
					ok = s3IAM[name]
				}
				if !ok {
					t.Errorf("%s grants %s, which the AWS SDK for Go v2 has no operation for", fn, a)
				}
			}
		}
	})

	t.Run("fail/a-missing-grant-is-found", func(t *testing.T) {
		// Drop one granted action the vendor needs: the check must see it.
		cut := map[string]map[string]bool{}
		for fn, acts := range granted {
			cut[fn] = map[string]bool{}
			for a := range acts {
				cut[fn][a] = true
			}
		}
		delete(cut[cloud.Vendor], "iot:CreateCertificateFromCsr")
		miss := missingGrants(needed, cut)
		if len(miss) != 1 || !strings.HasPrefix(miss[0], cloud.Vendor+": iot:CreateCertificateFromCsr") {
			t.Fatalf("missing grants %v, want exactly the vendor's iot:CreateCertificateFromCsr", miss)
		}
	})
}

// TestCfnLint runs cfn-lint (with its SAM translator) on the template where
// it is installed. It is optional: PyPI, where it comes from, is not
// reachable from the machines `make test` runs on, so it is skipped when
// missing even under CI=true.
func TestCfnLint(t *testing.T) {
	path, err := exec.LookPath("cfn-lint")
	if err != nil {
		t.Skip("cfn-lint not on PATH (pip install cfn-lint; not installable by make deps)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ver, _ := exec.CommandContext(ctx, path, "--version").CombinedOutput()
	out, err := exec.CommandContext(ctx, path, templatePath).CombinedOutput()
	t.Logf("%s", strings.TrimSpace(string(ver)))
	if err != nil {
		t.Fatalf("cfn-lint %s: %v\n%s", templatePath, err, out)
	}
}
