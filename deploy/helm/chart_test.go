package helm

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// scaledObject is the part of KEDA's ScaledObject (keda.sh/v1alpha1) the
// chart sets (KEDA's Go module is too large a dependency for one type);
// decoding is strict, so a field the chart sets and this type lacks fails
// the test. ServiceMonitors decode into the Prometheus Operator's own type.
type scaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		ScaleTargetRef struct {
			Name string `json:"name"`
		} `json:"scaleTargetRef"`
		MinReplicaCount *int32 `json:"minReplicaCount"`
		MaxReplicaCount *int32 `json:"maxReplicaCount"`
		PollingInterval int32  `json:"pollingInterval"`
		CooldownPeriod  int32  `json:"cooldownPeriod"`
		Triggers        []struct {
			Type              string            `json:"type"`
			Metadata          map[string]string `json:"metadata"`
			AuthenticationRef *struct {
				Name string `json:"name"`
			} `json:"authenticationRef,omitempty"`
		} `json:"triggers"`
	} `json:"spec"`
}

// triggerAuthentication is the part of KEDA's TriggerAuthentication the
// chart sets.
type triggerAuthentication struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SecretTargetRef []struct {
			Parameter string `json:"parameter"`
			Name      string `json:"name"`
			Key       string `json:"key"`
		} `json:"secretTargetRef"`
	} `json:"spec"`
}

// rendered is the chart's objects by kind, each strictly decoded.
type rendered struct {
	deployments     map[string]*appsv1.Deployment // by component
	services        map[string]*corev1.Service
	pdbs            map[string]*policyv1.PodDisruptionBudget
	secrets         []*corev1.Secret
	configMaps      map[string]*corev1.ConfigMap // by component
	serviceAccounts []*corev1.ServiceAccount
	scaledObjects   map[string]*scaledObject
	serviceMonitors map[string]*monitoringv1.ServiceMonitor
	triggerAuths    map[string]*triggerAuthentication // by name
}

// render renders the chart with values over values.yaml, as "helm
// template prod ./emoflow --namespace emoflow" would.
func render(t *testing.T, values map[string]any) (*rendered, error) {
	t.Helper()
	chrt, err := loader.Load("emoflow")
	if err != nil {
		t.Fatal(err)
	}
	caps := common.DefaultCapabilities.Copy()
	caps.KubeVersion = common.KubeVersion{Version: "v1.31.0", Major: "1", Minor: "31"}
	vals, err := util.ToRenderValues(chrt, values, common.ReleaseOptions{Name: "prod", Namespace: "emoflow", IsInstall: true}, caps)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	files, err := engine.Engine{Strict: true}.RenderWithContext(ctx, chrt, vals)
	if err != nil {
		return nil, err
	}
	r := &rendered{
		deployments: map[string]*appsv1.Deployment{}, services: map[string]*corev1.Service{},
		pdbs: map[string]*policyv1.PodDisruptionBudget{}, scaledObjects: map[string]*scaledObject{},
		serviceMonitors: map[string]*monitoringv1.ServiceMonitor{}, triggerAuths: map[string]*triggerAuthentication{},
		configMaps: map[string]*corev1.ConfigMap{},
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range files {
			if !yield(k) {
				return
			}
		}
	})
	for _, name := range names {
		if !strings.HasSuffix(name, ".yaml") {
			continue
		}
		for i, doc := range strings.Split(files[name], "\n---") {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			if err := r.add([]byte(doc)); err != nil {
				t.Fatalf("%s, document %d: %v\n%s", name, i+1, err, doc)
			}
		}
	}
	return r, nil
}

func (r *rendered) add(doc []byte) error {
	var meta metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		return err
	}
	component := func(m metav1.ObjectMeta) string { return m.Labels["app.kubernetes.io/component"] }
	switch meta.APIVersion + " " + meta.Kind {
	case "apps/v1 Deployment":
		var o appsv1.Deployment
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			return err
		}
		r.deployments[component(o.ObjectMeta)] = &o
	case "v1 Service":
		var o corev1.Service
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			return err
		}
		r.services[component(o.ObjectMeta)] = &o
	case "policy/v1 PodDisruptionBudget":
		var o policyv1.PodDisruptionBudget
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			return err
		}
		r.pdbs[component(o.ObjectMeta)] = &o
	case "v1 Secret":
		var o corev1.Secret
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			return err
		}
		r.secrets = append(r.secrets, &o)
	case "v1 ConfigMap":
		var o corev1.ConfigMap
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			return err
		}
		r.configMaps[component(o.ObjectMeta)] = &o
	case "v1 ServiceAccount":
		var o corev1.ServiceAccount
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			return err
		}
		r.serviceAccounts = append(r.serviceAccounts, &o)
	case "keda.sh/v1alpha1 ScaledObject":
		var o scaledObject
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			return err
		}
		r.scaledObjects[component(o.ObjectMeta)] = &o
	case "monitoring.coreos.com/v1 ServiceMonitor":
		var o monitoringv1.ServiceMonitor
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			return err
		}
		r.serviceMonitors[component(o.ObjectMeta)] = &o
	case "keda.sh/v1alpha1 TriggerAuthentication":
		var o triggerAuthentication
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			return err
		}
		r.triggerAuths[o.Name] = &o
	default:
		return fmt.Errorf("object of kind %s %s: the test does not know it", meta.APIVersion, meta.Kind)
	}
	return nil
}

// flagReference reads the configuration reference in the README (generated
// from the binaries' flags and checked by internal/configref): per binary,
// environment variable -> default.
func flagReference(t *testing.T) map[string]map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	row := regexp.MustCompile("^\\| `-[a-z0-9-]+` \\| `(EMOFLOW_[A-Z0-9_]+)` \\| `?([^`|]*)`? \\|")
	ref := map[string]map[string]string{}
	binary := ""
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		line := s.Text()
		if b, ok := strings.CutPrefix(line, "### "); ok {
			binary = b
			continue
		}
		if m := row.FindStringSubmatch(line); m != nil && binary != "" {
			if ref[binary] == nil {
				ref[binary] = map[string]string{}
			}
			ref[binary][m[1]] = strings.TrimSpace(m[2])
		}
	}
	for _, b := range []string{"ingest", "classifier", "sink", "alerter"} {
		if len(ref[b]) < 10 {
			t.Fatalf("README configuration reference: found %d variables of %s", len(ref[b]), b)
		}
	}
	return ref
}

func envValue(c corev1.Container, name string) (corev1.EnvVar, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return corev1.EnvVar{}, false
}

func seconds(t *testing.T, what, v string) int64 {
	t.Helper()
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s %q: %v", what, v, err)
	}
	return int64(d / time.Second)
}

// TestChart renders the chart with its default values and checks every
// object against the invariants of a safe deployment.
func TestChart(t *testing.T) {
	r, err := render(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	ref := flagReference(t)
	components := []string{"classifier", "ingest", "sink", "alerter"}
	if len(r.deployments) != 4 || len(r.services) != 4 || len(r.pdbs) != 4 || len(r.serviceMonitors) != 4 || len(r.scaledObjects) != 3 || len(r.secrets) != 1 || len(r.serviceAccounts) != 1 || len(r.configMaps) != 1 {
		t.Fatalf("rendered %d deployments, %d services, %d PDBs, %d ServiceMonitors, %d ScaledObjects, %d secrets, %d service accounts, %d ConfigMaps; want 4, 4, 4, 4, 3, 1, 1, 1",
			len(r.deployments), len(r.services), len(r.pdbs), len(r.serviceMonitors), len(r.scaledObjects), len(r.secrets), len(r.serviceAccounts), len(r.configMaps))
	}
	secret := r.secrets[0]
	for _, name := range components {
		d := r.deployments[name]
		if d == nil {
			t.Fatalf("no Deployment for %s", name)
		}
		t.Run(name, func(t *testing.T) {
			checkPod(t, name, d, r, secret, ref[name])
		})
	}

	// The classifier on the GPU pool, one GPU per pod, model and adapters
	// from a read-only volume.
	cls := r.deployments["classifier"].Spec.Template.Spec
	c := cls.Containers[0]
	gpu := corev1.ResourceName("nvidia.com/gpu")
	if q := c.Resources.Limits[gpu]; q.Cmp(resource.MustParse("1")) != 0 {
		t.Errorf("classifier GPU limit %v, want 1", q.String())
	}
	if q := c.Resources.Requests[gpu]; q.Cmp(resource.MustParse("1")) != 0 {
		t.Errorf("classifier GPU request %v, want 1", q.String())
	}
	if len(cls.NodeSelector) == 0 {
		t.Errorf("classifier has no nodeSelector for the GPU pool")
	}
	if !slices.ContainsFunc(cls.Tolerations, func(tol corev1.Toleration) bool { return tol.Key == "nvidia.com/gpu" }) {
		t.Errorf("classifier does not tolerate the GPU taint: %v", cls.Tolerations)
	}
	if c.StartupProbe == nil || c.StartupProbe.HTTPGet == nil || c.StartupProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("classifier has no startup probe (model loading) on /healthz")
	}
	if env, _ := envValue(c, "EMOFLOW_DEVICE"); !strings.HasPrefix(env.Value, "cuda") {
		t.Errorf("classifier EMOFLOW_DEVICE %q, want cuda", env.Value)
	}
	claim := false
	for _, v := range cls.Volumes {
		if v.PersistentVolumeClaim != nil {
			claim = v.PersistentVolumeClaim.ReadOnly && v.PersistentVolumeClaim.ClaimName != ""
			for _, m := range c.VolumeMounts {
				if m.Name == v.Name && !m.ReadOnly {
					t.Errorf("models volume mounted writable")
				}
			}
		}
	}
	if !claim {
		t.Errorf("classifier: no read-only PersistentVolumeClaim volume for the model")
	}
	for _, env := range []string{"EMOFLOW_MODEL_DIR", "EMOFLOW_ADAPTERS_DIR"} {
		e, _ := envValue(c, env)
		if !strings.HasPrefix(e.Value, "/models/") {
			t.Errorf("classifier %s = %q, want a path under the /models volume", env, e.Value)
		}
	}
	// The classifier refuses a network address with the admin API open and
	// no token: by default the chart closes it.
	if e, _ := envValue(c, "EMOFLOW_ADMIN_API"); e.Value != "false" {
		t.Errorf("classifier EMOFLOW_ADMIN_API %q by default, want false (no admin token is configured)", e.Value)
	}
	if len(r.triggerAuths) != 0 {
		t.Errorf("TriggerAuthentication without Kafka SASL or TLS")
	}
	if s := r.deployments["classifier"].Spec.Strategy.RollingUpdate; s == nil || s.MaxSurge == nil || s.MaxSurge.IntValue() != 0 {
		t.Errorf("classifier rollout may surge a pod that waits for a GPU")
	}

	// ingest, sink and alerter scale with KEDA on their consumer group's
	// lag, up to the partition count.
	partitions := 8
	topics := map[string]string{"ingest": "chat.messages", "sink": "emotion.events", "alerter": "emotion.events"}
	groups := map[string]string{"ingest": "emoflow-ingest", "sink": "emoflow-sink", "alerter": "emoflow-alerter"}
	for name, so := range r.scaledObjects {
		d := r.deployments[name]
		if so.Spec.ScaleTargetRef.Name != d.Name {
			t.Errorf("%s ScaledObject targets %q, not its Deployment %q", name, so.Spec.ScaleTargetRef.Name, d.Name)
		}
		if d.Spec.Replicas != nil {
			t.Errorf("%s Deployment sets replicas, which fights KEDA", name)
		}
		if so.Spec.MaxReplicaCount == nil || int(*so.Spec.MaxReplicaCount) > partitions || *so.Spec.MaxReplicaCount < *so.Spec.MinReplicaCount {
			t.Errorf("%s: maxReplicaCount %v, want between minReplicaCount and the %d partitions", name, so.Spec.MaxReplicaCount, partitions)
		}
		if len(so.Spec.Triggers) != 1 || so.Spec.Triggers[0].Type != "kafka" {
			t.Fatalf("%s: triggers %v, want one kafka trigger", name, so.Spec.Triggers)
		}
		md := so.Spec.Triggers[0].Metadata
		if md["topic"] != topics[name] || md["consumerGroup"] != groups[name] || md["lagThreshold"] == "" {
			t.Errorf("%s kafka trigger %v: want topic %s, group %s and a lag threshold", name, md, topics[name], groups[name])
		}
		ctr := d.Spec.Template.Spec.Containers[0]
		if e, _ := envValue(ctr, "EMOFLOW_GROUP_ID"); e.Value != md["consumerGroup"] {
			t.Errorf("%s consumes as group %q, KEDA watches %q", name, e.Value, md["consumerGroup"])
		}
		if e, _ := envValue(ctr, "EMOFLOW_KAFKA_BROKERS"); e.Value != md["bootstrapServers"] {
			t.Errorf("%s brokers %q, KEDA's %q", name, e.Value, md["bootstrapServers"])
		}
		if e, _ := envValue(ctr, "EMOFLOW_TOPIC_PARTITIONS"); e.Value != strconv.Itoa(partitions) {
			t.Errorf("%s creates topics with %q partitions, want %d", name, e.Value, partitions)
		}
	}
	if _, ok := r.scaledObjects["classifier"]; ok {
		t.Errorf("the classifier is scaled by KEDA on Kafka lag; it has no consumer group")
	}
	if e, _ := envValue(r.deployments["ingest"].Spec.Template.Spec.Containers[0], "EMOFLOW_CLASSIFIER_URLS"); e.Value != fmt.Sprintf("http://%s:%d", r.services["classifier"].Name, r.services["classifier"].Spec.Ports[0].Port) {
		t.Errorf("ingest's classifier URL %q does not name the classifier Service", e.Value)
	}
	checkAlerterRules(t, r)
}

// checkAlerterRules checks that the alerter reads the rules of the chart's
// ConfigMap, mounted read-only where EMOFLOW_RULES points, that the default
// rules are deploy/alerts/rules.json's (which the alerts package's tests
// load), and that the pods roll when the rules change.
func checkAlerterRules(t *testing.T, r *rendered) {
	t.Helper()
	cm, d := r.configMaps["alerter"], r.deployments["alerter"]
	if cm == nil || d == nil {
		t.Fatalf("no alerter ConfigMap or Deployment")
	}
	pod := d.Spec.Template.Spec
	rules, _ := envValue(pod.Containers[0], "EMOFLOW_RULES")
	dir, file := filepath.Split(rules.Value)
	mounted := false
	for _, m := range pod.Containers[0].VolumeMounts {
		if m.MountPath+"/" != dir {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil && v.ConfigMap.Name == cm.Name && m.ReadOnly {
				mounted = true
			}
		}
	}
	if !mounted {
		t.Errorf("EMOFLOW_RULES=%q is not a file of the read-only ConfigMap %s", rules.Value, cm.Name)
	}
	var got, want any
	if err := json.Unmarshal([]byte(cm.Data[file]), &got); err != nil {
		t.Fatalf("ConfigMap %s: %s is not JSON: %v", cm.Name, file, err)
	}
	raw, err := os.ReadFile(filepath.Join("..", "alerts", "rules.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the chart's default rules differ from deploy/alerts/rules.json:\n%s", cm.Data[file])
	}
	sum := sha256.Sum256([]byte(strings.TrimSuffix(cm.Data[file], "\n")))
	if a := d.Spec.Template.Annotations["checksum/rules"]; a != hex.EncodeToString(sum[:]) {
		t.Errorf("pod annotation checksum/rules %q is not the SHA-256 of the rules: a rule change would not roll the pods", a)
	}
}

// checkPod checks a component's Deployment: security, probes on the real
// paths and port, drain timing against the binary's flags, Service, PDB,
// ServiceMonitor and credentials from the Secret.
func checkPod(t *testing.T, name string, d *appsv1.Deployment, r *rendered, secret *corev1.Secret, flags map[string]string) {
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 || len(pod.InitContainers) != 0 {
		t.Fatalf("%d containers, %d init containers; want 1 and 0", len(pod.Containers), len(pod.InitContainers))
	}
	c := pod.Containers[0]
	if !labelsMatch(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("selector %v does not select the pod labels %v", d.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
	}

	// No root, no privilege, read-only root filesystem.
	ps := pod.SecurityContext
	if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.RunAsUser == nil || *ps.RunAsUser == 0 {
		t.Errorf("pod security context %+v: want runAsNonRoot and a non-zero runAsUser", ps)
	}
	if ps != nil && (ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault) {
		t.Errorf("pod has no RuntimeDefault seccomp profile")
	}
	sc := c.SecurityContext
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		(sc.Privileged != nil && *sc.Privileged) || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("container security context %+v: want no privilege escalation, read-only root, drop ALL, not privileged", sc)
	}
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		t.Errorf("pod shares the host's namespaces")
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("pod mounts a service account token it does not need")
	}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			t.Errorf("volume %s is a hostPath", v.Name)
		}
	}

	// Resources: requests for scheduling, a memory limit.
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v: want CPU and memory requests and a memory limit", c.Resources)
	}

	// The HTTP server listens where the probes, the Service and the
	// ServiceMonitor look: EMOFLOW_HTTP_ADDR's port is the container port.
	addr, _ := envValue(c, "EMOFLOW_HTTP_ADDR")
	port, err := strconv.Atoi(strings.TrimPrefix(addr.Value, ":"))
	if err != nil || len(c.Ports) != 1 || int(c.Ports[0].ContainerPort) != port || c.Ports[0].Name != "http" {
		t.Errorf("EMOFLOW_HTTP_ADDR %q and ports %v: want one port named http, the one the binary listens on", addr.Value, c.Ports)
	}
	probes := map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe}
	wantPath := map[string]string{"readiness": "/readyz", "liveness": "/healthz"}
	for kind, p := range probes {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("no %s probe", kind)
			continue
		}
		if p.HTTPGet.Path != wantPath[kind] || p.HTTPGet.Port.String() != "http" {
			t.Errorf("%s probe on %s port %s, want %s on http", kind, p.HTTPGet.Path, p.HTTPGet.Port.String(), wantPath[kind])
		}
	}

	// Drain: the pod gets preStop, then SIGTERM and -shutdown-timeout for
	// the in-flight work (the drain timeout inside it), then the HTTP
	// server's 5 s; the grace period must cover all of it.
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		t.Fatalf("no preStop sleep")
	}
	preStop := c.Lifecycle.PreStop.Sleep.Seconds
	shutdownEnv, ok := envValue(c, "EMOFLOW_SHUTDOWN_TIMEOUT")
	if !ok {
		t.Fatalf("EMOFLOW_SHUTDOWN_TIMEOUT not set: the grace period would rest on the binary's default")
	}
	shutdown := seconds(t, "EMOFLOW_SHUTDOWN_TIMEOUT", shutdownEnv.Value)
	grace := *pod.TerminationGracePeriodSeconds
	if grace < preStop+shutdown+5 {
		t.Errorf("terminationGracePeriodSeconds %d < preStop %d + shutdown timeout %d + 5 s of HTTP shutdown", grace, preStop, shutdown)
	}
	if drain, ok := envValue(c, "EMOFLOW_DRAIN_TIMEOUT"); ok {
		if d := seconds(t, "EMOFLOW_DRAIN_TIMEOUT", drain.Value); d >= shutdown {
			t.Errorf("drain timeout %ds not below the shutdown timeout %ds", d, shutdown)
		}
	} else if _, has := flags["EMOFLOW_DRAIN_TIMEOUT"]; has {
		t.Errorf("%s has -drain-timeout but the chart does not set it", name)
	}
	t.Logf("grace %ds = preStop %ds + shutdown %ds + HTTP 5s + margin", grace, preStop, shutdown)

	// Every variable the chart sets is a flag of this binary.
	for _, e := range c.Env {
		if _, ok := flags[e.Name]; !ok {
			t.Errorf("env %s is not a flag of %s (README configuration reference)", e.Name, name)
		}
		if e.ValueFrom != nil {
			ref := e.ValueFrom.SecretKeyRef
			if ref == nil || ref.Name != secret.Name {
				t.Errorf("env %s from %+v, want the chart's Secret %s", e.Name, e.ValueFrom, secret.Name)
			} else if _, ok := secret.StringData[ref.Key]; !ok {
				t.Errorf("env %s from key %q, which Secret %s lacks", e.Name, ref.Key, secret.Name)
			}
		}
		if (strings.Contains(e.Name, "PASSWORD") || strings.Contains(e.Name, "TOKEN")) && !strings.HasSuffix(e.Name, "_FILE") {
			if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				t.Errorf("credential %s not from a Secret", e.Name)
			}
		}
	}

	// Service, PDB and ServiceMonitor select these pods on the http port.
	svc := r.services[name]
	if svc == nil || !labelsMatch(svc.Spec.Selector, d.Spec.Template.Labels) || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.String() != "http" {
		t.Errorf("Service %+v does not reach the pods' http port", svc)
	}
	pdb := r.pdbs[name]
	if pdb == nil || pdb.Spec.Selector == nil || !labelsMatch(pdb.Spec.Selector.MatchLabels, d.Spec.Template.Labels) ||
		pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() < 1 {
		t.Errorf("PodDisruptionBudget %+v: want one on these pods that lets a node drain (maxUnavailable >= 1)", pdb)
	}
	sm := r.serviceMonitors[name]
	if sm == nil || !labelsMatch(sm.Spec.Selector.MatchLabels, svc.Labels) || len(sm.Spec.Endpoints) != 1 ||
		sm.Spec.Endpoints[0].Port != "http" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor %+v: want /metrics on the Service's http port", sm)
	}
}

func labelsMatch(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// TestChartValues renders the chart with values a user may set, and with
// values it must refuse.
func TestChartValues(t *testing.T) {
	t.Run("existing secret", func(t *testing.T) {
		r, err := render(t, map[string]any{"secrets": map[string]any{"existingSecret": "ops-emoflow"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.secrets) != 0 {
			t.Errorf("the chart made a Secret although existingSecret is set")
		}
		ctr := r.deployments["sink"].Spec.Template.Spec.Containers[0]
		if e, _ := envValue(ctr, "EMOFLOW_CLICKHOUSE_PASSWORD"); e.ValueFrom == nil || e.ValueFrom.SecretKeyRef.Name != "ops-emoflow" {
			t.Errorf("sink password from %+v, want Secret ops-emoflow", e.ValueFrom)
		}
	})
	t.Run("cluster and longer drain", func(t *testing.T) {
		r, err := render(t, map[string]any{
			"clickhouse": map[string]any{"cluster": "emoflow"},
			"sink":       map[string]any{"drainTimeoutSeconds": 50, "shutdownTimeoutSeconds": 60, "autoscaling": map[string]any{"maxReplicas": 3}},
		})
		if err != nil {
			t.Fatal(err)
		}
		d := r.deployments["sink"]
		if e, _ := envValue(d.Spec.Template.Spec.Containers[0], "EMOFLOW_CLICKHOUSE_CLUSTER"); e.Value != "emoflow" {
			t.Errorf("EMOFLOW_CLICKHOUSE_CLUSTER %q", e.Value)
		}
		if g := *d.Spec.Template.Spec.TerminationGracePeriodSeconds; g < 60+2+5 {
			t.Errorf("grace period %d does not follow the shutdown timeout of 60 s", g)
		}
		if m := *r.scaledObjects["sink"].Spec.MaxReplicaCount; m != 3 {
			t.Errorf("maxReplicaCount %d, want 3", m)
		}
	})
	t.Run("alerter off, own rules", func(t *testing.T) {
		r, err := render(t, map[string]any{"alerter": map[string]any{"enabled": false}})
		if err != nil {
			t.Fatal(err)
		}
		for kind, n := range map[string]bool{"Deployment": r.deployments["alerter"] != nil, "Service": r.services["alerter"] != nil,
			"ScaledObject": r.scaledObjects["alerter"] != nil, "ConfigMap": r.configMaps["alerter"] != nil} {
			if n {
				t.Errorf("alerter.enabled=false still renders the alerter's %s", kind)
			}
		}
		rules := map[string]any{"labels": []any{"calm", "angry"}, "rules": []any{map[string]any{"name": "angry-run", "kind": "run", "negative": []any{"angry"}, "start": []any{"calm"}, "length": 2}}}
		on, err := render(t, map[string]any{"alerter": map[string]any{"rules": rules, "adapter": "support-lora"}})
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(on.configMaps["alerter"].Data["rules.json"]), &got); err != nil || got["rules"].([]any)[0].(map[string]any)["name"] != "angry-run" {
			t.Errorf("rules.json %q (%v): want the values' rules", on.configMaps["alerter"].Data["rules.json"], err)
		}
		def, err := render(t, nil)
		if err != nil {
			t.Fatal(err)
		}
		if a, b := on.deployments["alerter"].Spec.Template.Annotations["checksum/rules"], def.deployments["alerter"].Spec.Template.Annotations["checksum/rules"]; a == b {
			t.Errorf("other rules, same checksum/rules %q: the pods would not roll", a)
		}
		if e, _ := envValue(on.deployments["alerter"].Spec.Template.Spec.Containers[0], "EMOFLOW_ADAPTER"); e.Value != "support-lora" {
			t.Errorf("EMOFLOW_ADAPTER %q, want support-lora", e.Value)
		}
	})
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"more replicas than partitions", map[string]any{"ingest": map[string]any{"autoscaling": map[string]any{"maxReplicas": 9}}}, "exceeds kafka.topicPartitions"},
		{"drain longer than shutdown", map[string]any{"sink": map[string]any{"drainTimeoutSeconds": 30}}, "must be below sink.shutdownTimeoutSeconds"},
		{"SASL plain without TLS", map[string]any{"kafka": map[string]any{"sasl": map[string]any{"mechanism": "plain"}}}, "set kafka.tls.enabled"},
		{"unknown SASL mechanism", map[string]any{"kafka": map[string]any{"sasl": map[string]any{"mechanism": "gssapi"}}}, "want scram-sha-512 or plain"},
		{"admin API with a short token", map[string]any{"classifier": map[string]any{"adminApi": true}, "secrets": map[string]any{"classifierAdminToken": "short"}}, "at least 16 characters"},
		{"client tokens without ingest's", map[string]any{"classifier": map[string]any{"auth": map[string]any{"enabled": true}}}, "needs secrets.ingestClassifierToken"},
		{"alerter without Redis", map[string]any{"redis": map[string]any{"addr": ""}}, "alerter.enabled needs redis.addr"},
		{"alerter beyond the partitions", map[string]any{"alerter": map[string]any{"autoscaling": map[string]any{"maxReplicas": 9}}}, "alerter.autoscaling.maxReplicas (9) exceeds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := render(t, tc.values); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("render: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// TestChartSecured renders the chart with every connection secured (Kafka
// SASL and TLS, Redis and ClickHouse TLS and users, classifier client
// tokens and admin token) and checks that credentials reach the binaries
// only from the Secret, files only from read-only Secret volumes, and that
// KEDA reads the lag with the same credentials.
func TestChartSecured(t *testing.T) {
	secrets := map[string]any{
		"kafkaSaslUsername": "emoflow", "kafkaSaslPassword": "kafka-pw-1234567",
		"redisUsername": "emoflow", "redisPassword": "redis-pw-7654321",
		"clickhousePassword": "ch-pw-5556667", "classifierAdminToken": "admin-token-0123456789",
		"ingestClassifierToken": "ingest-token-abcdef0123",
	}
	tls := func(ca string) map[string]any { return map[string]any{"enabled": true, "caSecret": ca} }
	r, err := render(t, map[string]any{
		"kafka":      map[string]any{"sasl": map[string]any{"mechanism": "scram-sha-512"}, "tls": tls("kafka-ca")},
		"redis":      map[string]any{"tls": tls("redis-ca")},
		"clickhouse": map[string]any{"tls": tls("clickhouse-ca"), "addr": "ch:9440"},
		"classifier": map[string]any{"adminApi": true, "auth": map[string]any{"enabled": true}},
		"secrets":    secrets,
	})
	if err != nil {
		t.Fatal(err)
	}
	ref := flagReference(t)
	secret := r.secrets[0]
	for name, d := range r.deployments {
		t.Run(name, func(t *testing.T) {
			checkPod(t, name, d, r, secret, ref[name])
			raw, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range secrets {
				if v != "emoflow" && strings.Contains(string(raw), v.(string)) {
					t.Errorf("the Deployment carries the credential %q itself", v)
				}
			}
			// Every file the binary is pointed at is in a read-only volume
			// from a Secret that has the file.
			pod := d.Spec.Template.Spec
			for _, e := range pod.Containers[0].Env {
				if !strings.HasSuffix(e.Name, "_FILE") {
					continue
				}
				found := false
				for _, m := range pod.Containers[0].VolumeMounts {
					rel, ok := strings.CutPrefix(e.Value, m.MountPath+"/")
					if !ok {
						continue
					}
					for _, v := range pod.Volumes {
						if v.Name == m.Name && v.Secret != nil && m.ReadOnly && slices.ContainsFunc(v.Secret.Items, func(k corev1.KeyToPath) bool { return k.Path == rel }) {
							found = true
						}
					}
				}
				if !found {
					t.Errorf("%s=%s is not a file of a read-only Secret volume", e.Name, e.Value)
				}
			}
		})
	}
	env := func(component, name string) corev1.EnvVar {
		e, ok := envValue(r.deployments[component].Spec.Template.Spec.Containers[0], name)
		if !ok {
			t.Errorf("%s lacks %s", component, name)
		}
		return e
	}
	fromSecret := func(e corev1.EnvVar) string {
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			t.Errorf("%s not from the Secret", e.Name)
			return ""
		}
		return secret.StringData[e.ValueFrom.SecretKeyRef.Key]
	}
	for _, c := range []string{"ingest", "sink", "alerter"} {
		if env(c, "EMOFLOW_KAFKA_SASL_MECHANISM").Value != "scram-sha-512" || fromSecret(env(c, "EMOFLOW_KAFKA_SASL_PASSWORD")) != secrets["kafkaSaslPassword"] ||
			fromSecret(env(c, "EMOFLOW_KAFKA_SASL_USERNAME")) != "emoflow" || env(c, "EMOFLOW_KAFKA_TLS").Value != "true" {
			t.Errorf("%s: Kafka SASL/TLS not configured from the Secret", c)
		}
		so := r.scaledObjects[c]
		trig := so.Spec.Triggers[0]
		if trig.AuthenticationRef == nil || r.triggerAuths[trig.AuthenticationRef.Name] == nil || trig.Metadata["sasl"] != "scram_sha512" || trig.Metadata["tls"] != "enable" {
			t.Errorf("%s ScaledObject: authenticationRef %+v, metadata %v: want the chart's TriggerAuthentication, SASL and TLS", c, trig.AuthenticationRef, trig.Metadata)
		}
	}
	for _, ta := range r.triggerAuths {
		params := map[string]bool{}
		for _, ref := range ta.Spec.SecretTargetRef {
			params[ref.Parameter] = true
			if ref.Name == secret.Name {
				if _, ok := secret.StringData[ref.Key]; !ok {
					t.Errorf("TriggerAuthentication %s: key %s not in the Secret", ta.Name, ref.Key)
				}
			} else if ref.Name != "kafka-ca" {
				t.Errorf("TriggerAuthentication %s refers to Secret %s", ta.Name, ref.Name)
			}
		}
		if !params["username"] || !params["password"] || !params["ca"] {
			t.Errorf("TriggerAuthentication %s parameters %v, want username, password, ca", ta.Name, params)
		}
	}
	for _, c := range []string{"ingest", "alerter"} {
		if fromSecret(env(c, "EMOFLOW_REDIS_PASSWORD")) != secrets["redisPassword"] || env(c, "EMOFLOW_REDIS_TLS").Value != "true" {
			t.Errorf("%s: Redis password or TLS missing", c)
		}
	}
	for _, c := range []string{"sink", "alerter"} {
		if fromSecret(env(c, "EMOFLOW_CLICKHOUSE_PASSWORD")) != secrets["clickhousePassword"] || env(c, "EMOFLOW_CLICKHOUSE_TLS").Value != "true" {
			t.Errorf("%s: ClickHouse password or TLS missing", c)
		}
	}
	if env("classifier", "EMOFLOW_ADMIN_API").Value != "true" || fromSecret(env("classifier", "EMOFLOW_ADMIN_TOKEN")) != secrets["classifierAdminToken"] {
		t.Errorf("classifier: admin API without its token")
	}
	// The classifier's tokens file names ingest with the SHA-256 of the
	// token ingest sends, in the form -tokens-file reads.
	token := fromSecret(env("ingest", "EMOFLOW_CLASSIFIER_TOKEN"))
	sum := sha256.Sum256([]byte(token))
	if got, want := secret.StringData["classifier-tokens"], "ingest sha256:"+hex.EncodeToString(sum[:])+"\n"; token == "" || got != want {
		t.Errorf("classifier tokens file %q, want %q", got, want)
	}
	if e := env("classifier", "EMOFLOW_TOKENS_FILE"); !strings.HasPrefix(e.Value, "/etc/emoflow/") {
		t.Errorf("EMOFLOW_TOKENS_FILE %q", e.Value)
	}
}
