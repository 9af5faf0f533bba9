package query_test
import ("testing";"time";"context"
 quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
 "google.golang.org/protobuf/types/known/timestamppb"
 "github.com/quilt/quilt/quiltcore/store/sqlitestore")
func TestDbg(t *testing.T) {
  st, err := sqlitestore.Open(t.TempDir(), sqlitestore.Options{})
  if err != nil { t.Fatal(err) }
  ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second); defer cancel()
  r, err := st.InsertEvents(ctx, "a", []*quiltv1.Event{{Id:"1", Source:"a", Server:"s", Time: timestamppb.Now(), Kind: 1, Text:"x"}}, nil)
  t.Log(r, err)
}
